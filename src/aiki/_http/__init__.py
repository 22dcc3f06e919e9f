"""What the HTTP server and the HTTP client share: the bodies, their codec, the error codes.

`aiki._core` stays pure domain; everything that only exists because a request crosses a network
(statuses, envelopes, error codes) lives here.
"""
