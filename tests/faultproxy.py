"""A TCP proxy on 127.0.0.1 between cowfs and the S3 server that can fail on demand."""

from __future__ import annotations

import socket
import struct
import threading

PASS, REFUSE, ERROR, HANG = "pass", "refuse", "error", "hang"
_503 = b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FaultProxy:
    """Forwards connections to ``upstream_port`` while in PASS mode.

    REFUSE resets every connection, ERROR answers every request with 503,
    HANG accepts and never answers. Switching modes drops open connections,
    so pooled keep-alive connections see the change at once.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = PASS
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self._drop_all()

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn, reset=True)

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        mode = self.mode
        self._track(conn)
        if mode == REFUSE:
            _close(conn, reset=True)
        elif mode == ERROR:
            try:
                while conn.recv(65536):
                    conn.sendall(_503)
                    break
            except OSError:
                pass
            _close(conn)
        elif mode == HANG:
            self._stopped.wait()
            _close(conn)
        else:
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                _close(conn, reset=True)
                return
            self._track(upstream)
            threading.Thread(target=_pump, args=(upstream, conn), daemon=True).start()
            _pump(conn, upstream)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    _close(src)
    _close(dst)


def _close(sock: socket.socket, reset: bool = False) -> None:
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
