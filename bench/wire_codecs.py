"""The HTTP bodies' codec: msgspec against pydantic `TypeAdapter`s over the same dataclasses.

Issue 9 asked for both to be measured on the enqueue and task-finish bodies before one was
kept; `aiki._http.codec` uses msgspec. Prints microseconds per call (lower is better) for
decoding a request strictly (what the server does) and encoding it (what the client does).

    uv run python bench/wire_codecs.py [--calls N]
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

import pydantic

from aiki._core.ids import RunId, WorkerId
from aiki._core.models import NewRun, TaskAddress, TaskEnd, TaskOutcome
from aiki._http.bodies import FinishTaskBody
from aiki._http.codec import Codec, encode

_BODIES: dict[str, Any] = {
    "enqueue (NewRun)": NewRun(
        workflow="onboarding",
        version="1.0.0",
        payload_json='{"plan":"pro","user_id":"u-123"}',
        idempotency_key="signup-u-123",
    ),
    "task finish (FinishTaskBody)": FinishTaskBody(
        revision=3,
        end=TaskEnd(
            address=TaskAddress(task="send-welcome-email", digest="ab" * 32, index=0),
            attempt=1,
            worker_id=WorkerId("worker-" + RunId("1f" * 8)),
            outcome=TaskOutcome.COMPLETED,
            duration_ms=12,
            result_json='{"sent":true,"to":"ada@example.com"}',
            start_reported=False,
        ),
    ),
}


def _per_call_us(action: Any, calls: int) -> float:
    return min(timeit.repeat(action, number=calls, repeat=5)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{'body':30} {'codec':9} {'decode µs':>10} {'encode µs':>10}")
    for name, body in _BODIES.items():
        for library, (decode, encode_) in _codecs(body).items():
            print(
                f"{name:30} {library:9} {_per_call_us(decode, args.calls):10.2f} "
                f"{_per_call_us(encode_, args.calls):10.2f}"
            )


def _codecs(body: Any) -> dict[str, tuple[Any, Any]]:
    """Each library's (decode, encode) of `body`, checked to agree first."""
    data = encode(body)
    codec = Codec(type(body))
    adapter = pydantic.TypeAdapter(type(body))
    assert codec.decode(data) == adapter.validate_json(data, strict=True) == body
    return {
        "msgspec": (lambda: codec.decode(data), lambda: encode(body)),
        "pydantic": (
            lambda: adapter.validate_json(data, strict=True),
            lambda: adapter.dump_json(body),
        ),
    }


if __name__ == "__main__":
    main()
