"""Running the HTTP app on a socket, with guards at the connection level.

``aiohttp.web.run_app`` does this too, but it cannot cap connections. Here the same supported
pieces (``AppRunner`` + ``TCPSite``) run with:

- a **connection cap**: past ``max_connections`` open connections a new one is answered
  ``503`` with ``Retry-After`` and closed at once, so idle or slow clients cannot use up the
  process's file descriptors (1,100 idle connections under a 1,024-descriptor limit blocked
  new clients for up to 75 s, and asyncio logged a traceback for every failed accept);
- an **idle timeout**: a connection that has sent no complete request within
  ``idle_timeout_s`` (from its start, or since its last response) is closed: slowloris and
  silent keep-alive connections do not hold their slot;
- **accept errors rate-limited**: if descriptors still run out (other files, a low limit),
  asyncio's "out of system resource" error is logged once per 10 s with a count, not once
  per attempt;
- a graceful stop on SIGINT/SIGTERM: in-flight requests finish (up to ``shutdown_timeout``)
  and the app's cleanup (draining the batcher) runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit

__all__ = ["GrpcBindError", "default_max_connections", "run_server"]

log = logging.getLogger("synthdetect.server")

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: 51\r\n\r\n"
    b'{"error": "too many open connections, retry later"}'
)


def default_max_connections() -> int:
    """Open connections allowed: 1,024, kept 128 descriptors under this process's limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft - 128))


def _cap_connections(server: web.Server, max_connections: int) -> None:
    accept = server.connection_made
    refused = {"n": 0, "logged": 0.0}

    def connection_made(handler, transport) -> None:
        if len(server.connections) >= max_connections:
            refused["n"] += 1
            now = time.monotonic()
            if now - refused["logged"] > 10:
                log.warning(
                    "connection cap (%d) reached: refused %d connections with 503",
                    max_connections,
                    refused["n"],
                )
                refused["logged"] = now
            transport.write(_REFUSED)
            # closed on the next turn of the loop, after the handler's task has started: closed
            # at once, that task met a handler already torn down and logged a traceback
            asyncio.get_running_loop().call_soon(transport.close)
            return
        accept(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]


class _AcceptErrors:
    """The loop's exception handler: accept failures (EMFILE and kin) once per 10 s."""

    def __init__(self) -> None:
        self.suppressed = 0
        self.last = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if "out of system resource" in str(context.get("message", "")):
            now = time.monotonic()
            if now - self.last < 10:
                self.suppressed += 1
                return
            exc = context.get("exception")
            log.error(
                "cannot accept connections: %s (%d more such errors in the last 10 s)",
                exc or context["message"],
                self.suppressed,
            )
            self.last, self.suppressed = now, 0
            return
        loop.default_exception_handler(context)


class GrpcBindError(OSError):
    """The gRPC port cannot be bound (the message names it). Here, not in ``grpc_server``: the
    command catches it without importing the gRPC stack, which HTTP alone does not need."""


def run_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    max_connections: int | None = None,
    idle_timeout_s: float = 15.0,
    shutdown_timeout: float = 30.0,
    on_listening: Callable[[int], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
    side_servers: tuple[Callable[[], Any], ...] = (),
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; ``OSError`` if the socket cannot be bound.

    ``side_servers``: factories, called inside the event loop, of servers with async
    ``start()`` and ``stop(grace)`` (the gRPC server): started with the app, stopped before it
    (so that the app's cleanup drains the work they handed over).

    ``on_stopping``: called first when a signal stops the server (readiness should fail from
    then on); the listening sockets close next, then the side servers drain, then the app."""
    cap = max_connections or default_max_connections()

    async def main() -> None:
        runner = web.AppRunner(
            app,
            handle_signals=True,
            access_log=None,
            # Compressed bodies are refused with 415 before they are read: the parser must not
            # inflate them meanwhile (a bad gzip stream logged a traceback; a bomb cost CPU).
            auto_decompress=False,
            keepalive_timeout=idle_timeout_s,
            shutdown_timeout=shutdown_timeout,
        )
        await runner.setup()
        started: list[Any] = []
        try:
            assert runner.server is not None
            _cap_connections(runner.server, cap)
            await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
            for make in side_servers:
                server = make()
                await server.start()
                started.append(server)
            if on_listening is not None:  # with the port bound (``port`` 0: the system's pick)
                on_listening(runner.addresses[0][1])
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            if on_stopping is not None:
                on_stopping()
            for site in list(runner.sites):  # no new connections while the side servers drain
                await site.stop()
            for server in started:
                await server.stop(shutdown_timeout)
            await runner.cleanup()

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_exception_handler(_AcceptErrors())
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (GracefulExit, KeyboardInterrupt):
        task.cancel()  # runs main's cleanup: in-flight requests finish, then the app's cleanup
        with contextlib.suppress(asyncio.CancelledError, GracefulExit, KeyboardInterrupt):
            loop.run_until_complete(task)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
