"""The wire: a ThreadingHTTPServer that reads each request, then answers, drops or hangs.

Standard library only on purpose: the "lost answer" fault must close the socket without writing a
single byte, which a framework would not let us do.  What to answer is decided elsewhere; this
module only knows the :class:`~skysync.emulator.replies.Reply` it gets back.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any, cast

from skysync.emulator.replies import Reply, error_reply

log = logging.getLogger("skysync.sandbox")

#: Decides the reply to (method, raw path, headers, body); runs in the connection's thread.
Answer = Callable[[str, str, Message, bytes], Reply]

_MAX_BODY = 16 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows who answers and can cut every open connection on stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], answer: Answer, stopping: threading.Event) -> None:
        self.answer = answer
        self.stopping = stopping
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a machine with
        # slow reverse DNS; the name is never used here.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer is routine for an emulator that drops sockets on
        # purpose; keep it out of stderr.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def track(self, conn: socket.socket) -> None:
        """Remember an open connection so stop() can cut it."""
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        """Forget a connection that has ended."""
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        """Shut keep-alive connections so a stopped emulator stops answering on them too."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _BodyError(Exception):
    """A body that cannot be read (bad framing or too large): answered, then the socket closes."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    """Wire-level work only: read the body, ask for the reply, then answer, drop or hang."""

    protocol_version = "HTTP/1.1"
    server_version = "SkyHubSandbox/1.0"
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client waits for
    # the delayed ACK (~40 ms) on every answer.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes to stderr; the request line holds the path, never a header.
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        """Read the body, ask for the reply, and act on it: send, drop, or hang then drop."""
        try:
            body = self._read_body()
        except _BodyError as exc:
            # The rest of the stream cannot be trusted after a bad framing: answer and close.
            self.close_connection = True
            self._send(error_reply(exc.status, exc.message))
            return
        reply = self.server.answer(method, self.path, self.headers, body)
        if reply.action == "hang":
            self.server.stopping.wait(reply.hang_seconds)
            self._drop()
        elif reply.action == "drop":
            self._drop()
        else:
            self._send(reply)

    def _read_body(self) -> bytes:
        """Read the whole body (Content-Length or chunked) so a dropped answer is a clean EOF."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise _BodyError(400, "Content-Length inválido") from None
        if length < 0:
            raise _BodyError(400, "Content-Length inválido")
        if length > _MAX_BODY:
            raise _BodyError(413, "Corpo da requisição grande demais")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        """Read a chunked body up to _MAX_BODY, skipping trailers."""
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "Corpo chunked inválido") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                raise _BodyError(413, "Corpo da requisição grande demais")
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, reply: Reply) -> None:
        """Write the status, headers and body; a client gone meanwhile just closes."""
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            has_body = reply.status not in (204, 304) and reply.status >= 200
            if has_body:
                if reply.body:
                    self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if has_body and reply.body:
                self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True

    def _drop(self) -> None:
        """Close without answering: the client sees 'server disconnected without a response'."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class Listener:
    """Binds, serves and stops the HTTP side; `answer` decides every reply.

    `stopping` is set while stopping, so a hung request or a latency sleep ends at once.
    """

    def __init__(self, answer: Answer, stopping: threading.Event) -> None:
        self.answer = answer
        self.stopping = stopping
        self.base_url = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        """True between binding and stop()."""
        return self._server is not None

    def start(self, host: str, port: int) -> str:
        """Serve in a daemon thread and return the base URL."""
        if self._thread is not None:
            return self.base_url
        server = self._bind(host, port)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},  # short: stop() returns promptly (tests stop hundreds)
            name="skyhub-sandbox",
            daemon=True,
        )
        self._thread.start()
        log.debug("SkyHub emulator serving on %s", self.base_url)
        return self.base_url

    def serve_forever(
        self, host: str, port: int, ready: Callable[[str], None] | None = None
    ) -> None:
        """Serve in the calling thread until interrupted; `ready` receives the base URL."""
        server = self._bind(host, port)
        if ready is not None:
            ready(self.base_url)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            self._close_server()

    def stop(self) -> None:
        """Stop serving, cut open connections and hung requests, and join the thread."""
        if self._server is None:
            return
        self.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._close_server()

    def _bind(self, host: str, port: int) -> _Server:
        """Open the listening socket and work out the base URL (IPv6 hosts in brackets)."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already serving")
        self.stopping.clear()
        server = _Server((host, port), self.answer, self.stopping)
        # an AF_INET or AF_INET6 socket: the host is a str
        bound_host, bound_port = cast(tuple[str, int], server.server_address[:2])
        shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        self.base_url = f"http://{shown}:{bound_port}"
        self._server = server
        return server

    def _close_server(self) -> None:
        """Cut the open connections and close the listening socket."""
        server, self._server = self._server, None
        if server is not None:
            server.close_connections()
            server.server_close()
