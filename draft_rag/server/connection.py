"""uvicorn's h11 protocol with a deadline for each request head.

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``), but not one
that never sends a request, nor one that sends its request line and headers a byte at a time. Here each
connection gets ``header_timeout`` seconds, from its opening and after every response, to send a whole head.
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol


def timed_protocol(header_timeout: float) -> type[H11Protocol]:
    """An ``H11Protocol`` class (uvicorn's ``http=``) that closes connections slower than ``header_timeout`` s."""

    class TimedH11Protocol(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a whole request head arrived
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return TimedH11Protocol
