"""A client that announces a large body and sends only its first bytes: what a flood of uploads looks like
to the server, without the bytes ever being produced."""

from __future__ import annotations

import re
import socket


def first_answer(port: int, headers: bytes, path: bytes = b"/measure", timeout: float = 5) -> bytes:
    """Announce a large body (a multipart upload to /measure, JSON elsewhere), send only its first
    bytes, and read the whole answer (its body may come in a segment of its own): a service that waits
    for the rest of the request times this out."""
    kind, start = (
        (b"multipart/form-data; boundary=b", b"--b\r\n") if path == b"/measure" else (b"application/json", b"{")
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + kind + b"\r\n" + headers + b"\r\n" + start
        )
        answer = b""
        while chunk := s.recv(4096):  # until the server closes ...
            answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head, re.I)
            if length and len(body) >= int(length[1]):  # ... or the answer is complete
                break
        return answer
