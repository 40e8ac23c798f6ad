"""A TCP proxy on 127.0.0.1 between cowfs and the S3 server that can fail on demand."""

from __future__ import annotations

import socket
import struct
import threading
import time

PASS, REFUSE, ERROR, HANG = "pass", "refuse", "error", "hang"
_503 = b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FaultProxy:
    """Forwards connections to ``upstream_port`` while in PASS mode.

    REFUSE resets every connection, ERROR answers every request with 503,
    HANG accepts and never answers. Switching modes drops open connections,
    so pooled keep-alive connections see the change at once. In PASS mode the
    answers can be held after some bytes (``hold``) or paced (``throttle``).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = PASS
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._hold_after = 0
        self._rate = 0.0
        self._next_send = 0.0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self._drop_all()

    def hold(self, after_bytes: int) -> None:
        """Each connection's answers stop once it has carried ``after_bytes``, until ``release``."""
        self._hold_after = after_bytes
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def holding(self) -> bool:
        return not self._gate.is_set()

    def throttle(self, bytes_per_second: float) -> None:
        """All answers together at most this fast (0: as fast as they come)."""
        self._rate = bytes_per_second

    def _pace(self, sent: int, size: int) -> None:
        """Called before ``size`` more answer bytes go out on a connection that sent ``sent``."""
        if sent + size > self._hold_after:
            self._gate.wait()
        if self._rate:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._next_send)
                self._next_send = start + size / self._rate
            time.sleep(start - now)

    def stop(self) -> None:
        self.release()
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
            threading.Thread(target=_pump, args=(upstream, conn, self._pace), daemon=True).start()
            _pump(conn, upstream)


def _pump(src: socket.socket, dst: socket.socket, pace=None) -> None:
    sent = 0
    try:
        while data := src.recv(65536):
            if pace is not None:
                pace(sent, len(data))
            dst.sendall(data)
            sent += len(data)
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
