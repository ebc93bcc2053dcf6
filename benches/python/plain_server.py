"""The plain pre-forked server of the Python benchmark (``bench.py``): one
process of it, blocking in ``accept()`` on the listening socket it was
given as fd ``argv[1]``, reading the 8-byte header and the payload,
answering OK with the payload as the body, closing. No Charon code.

``bench.py`` starts N of these with ``python3 plain_server.py FD``, a
fresh interpreter each, as charond starts a service's instances (or, with
``--plain-start fork``, forks them from itself)."""

import signal
import socket
import struct
import sys

HEADER = struct.Struct(">2sBBI")


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def serve(listener: socket.socket) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        conn, _ = listener.accept()
        try:
            head = recv_exact(conn, 8)
            n = HEADER.unpack(head)[3]
            payload = recv_exact(conn, n)
            # Answer OK with the request's payload as the body.
            conn.sendall(HEADER.pack(b"CH", 1, 2, 5 + n) + b"\0" + n.to_bytes(4, "big")
                         + payload)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
