"""The HTTP connection handler: uvicorn's h11 protocol with the deadlines it lacks.

uvicorn closes idle keep-alive connections but never times out a client that sends its request headers
slowly, so a few hundred trickling connections would hold the server's sockets forever. Here a request's
headers must arrive within ``HEADER_TIMEOUT_S`` of its first byte (or of the connection), and at most
``MAX_AWAITING_HEADERS`` connections may be waiting for theirs; past that a new connection is answered with
an AWS-shaped ThrottlingException at once. The body's deadline is the application's (``server/app.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
MAX_AWAITING_HEADERS = 256


class GuardedH11Protocol(H11Protocol):
    """h11 with a deadline for request headers and a bound on connections still sending them."""

    awaiting: ClassVar[set[GuardedH11Protocol]] = set()
    # Set by the application: counts each refusal made here (source, error code) with the unauthenticated ones.
    on_refusal: ClassVar[Callable[[str, str], None] | None] = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        if len(self.awaiting) >= MAX_AWAITING_HEADERS:
            self._refuse(
                503,
                b"Service Unavailable",
                "ThrottlingException",
                f"facegate has {len(self.awaiting)} connections still sending their request: retry later.",
            )
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
        elif self.conn.their_state is h11.IDLE:
            if self._header_timer is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self.awaiting.add(self)
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

    def _disarm(self) -> None:
        self.awaiting.discard(self)
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self.awaiting.discard(self)
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self._refuse(
            408,
            b"Request Timeout",
            "RequestTimeoutException",
            f"The request headers did not arrive within {HEADER_TIMEOUT_S:g} seconds.",
        )

    def _refuse(self, status: int, reason: bytes, code: str, message: str) -> None:
        """Answer before (or instead of) reading a request, then close the connection."""
        self._disarm()
        if self.on_refusal is not None:
            self.on_refusal(self.client[0] if self.client else "unknown", code)
        body = json.dumps({"__type": code, "Message": message}).encode()
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-errortype: %s\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, reason, code.encode(), len(body))
        )
        self.transport.write(head + body)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, in AWS's shape rather than plain text."""
        self._refuse(400, b"Bad Request", "SerializationException", f"{msg} The request is not valid HTTP/1.1.")
