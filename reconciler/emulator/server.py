"""Serving an ``EmulatorApp`` over real HTTP sockets.

``serve_in_thread`` is for tests (a threading server on a free port, stopped by ``close()`` or a
``with`` block); ``serve`` blocks and is what ``cvmkeys emulator serve`` runs. Both use the
standard library's ``wsgiref`` with one thread per connection, so requests overlap (latency
and slow answers do not hold others up). One port serves API 2.0 (``/v2/index.php``), API 3.0
and STS (``/``) and the metadata service (``/latest/meta-data/...``). A ``ConnectionDropped``
raised by the app makes the request end with the connection closed and no answer, as the fault
injector intends.
"""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Callable
from types import TracebackType
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from reconciler.emulator.app import API_PATH, EmulatorApp

log = logging.getLogger(__name__)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    """Logs requests at DEBUG level instead of printing each one to stderr."""

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class RunningServer:
    """An emulator serving on a socket in a background thread."""

    def __init__(self, server: _ThreadingWSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}{API_PATH}"  # API 2.0
        self.url3 = f"http://{self.host}:{self.port}/"  # API 3.0, STS and the metadata service
        self.endpoint = f"{self.host}:{self.port}"  # what Tencent's 3.0 SDK's HttpProfile takes

    def close(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RunningServer {self.url}>"


def _make(app: EmulatorApp, host: str, port: int) -> _ThreadingWSGIServer:
    server = make_server(host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    assert isinstance(server, _ThreadingWSGIServer)
    return server


def serve_in_thread(app: EmulatorApp, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Start serving ``app`` on ``host:port`` (0: a free port) in a daemon thread."""
    server = _make(app, host, port)
    # A short poll interval so that close() returns at once (tests start many servers).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="cvm-emulator", daemon=True
    )
    thread.start()
    return RunningServer(server, thread)


def serve(
    app: EmulatorApp, host: str = "127.0.0.1", port: int = 8080, *, ready: Callable[[str], None] | None = None
) -> None:
    """Serve until interrupted (Ctrl-C raises ``KeyboardInterrupt`` out of here, after closing).

    ``ready``, if given, is called with the 2.0 endpoint URL once the socket is listening (the
    3.0 one is the same host and port with path ``/``).
    """
    server = _make(app, host, port)
    bound_host, bound_port = server.server_address[:2]
    if ready is not None:
        ready(f"http://{bound_host!s}:{bound_port}{API_PATH}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
