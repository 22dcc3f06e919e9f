"""An `HttpTransport` over httpx, so tests can reach an ASGI app in-process or inject failures."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from aiki.client._transport import Reply, RequestFailedError, RequestNotSentError

# Never reached the server: what the aiohttp transport calls "not sent".
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class HttpxTransport:
    """Sends through an httpx transport such as `httpx.ASGITransport(app=srv.app)`."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._client = httpx.AsyncClient(transport=transport)

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        params: Mapping[str, str | int | float] | None,
        headers: Mapping[str, str],
        read_timeout: float,
    ) -> Reply:
        try:
            response = await self._client.request(
                method,
                url,
                content=content,
                params=params,
                headers=headers,
                timeout=httpx.Timeout(read_timeout, connect=5.0, pool=None),
            )
        except _NOT_SENT as exc:
            raise RequestNotSentError(f"{type(exc).__name__}: {exc}") from exc
        except httpx.TransportError as exc:
            raise RequestFailedError(f"{type(exc).__name__}: {exc}") from exc
        return Reply(
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            content=response.content,
            url=str(response.url),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
