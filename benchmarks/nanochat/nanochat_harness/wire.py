"""The evaluation's wire: framed messages over a Unix stream socket between the trusted
evaluator (which holds the targets) and the sandboxed model process (which holds the
candidate's model). Stdlib only; both ends import it.

A message is an 8-byte header ``<u32 json length><u32 0>``, a JSON object, and, when the object
has ``"nbytes": n``, exactly ``n`` raw bytes. The JSON part is at most :data:`MAX_HEADER`
bytes and the raw part at most the receiver's ``max_payload``; anything else is a
:class:`WireError` (the peer is not trusted to be well-formed).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any, Callable

MAX_HEADER = 1 << 16
_PREFIX = struct.Struct("<II")


class WireError(RuntimeError):
    """The peer closed the connection or sent something outside the protocol."""


def send(sock: socket.socket, header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> None:
    view = memoryview(payload).cast("B") if len(payload) else memoryview(b"")
    header = {**header, "nbytes": view.nbytes}
    raw = json.dumps(header, allow_nan=False).encode()
    if len(raw) > MAX_HEADER:
        raise WireError(f"header of {len(raw)} bytes is over the limit of {MAX_HEADER}")
    sock.sendall(_PREFIX.pack(len(raw), 0) + raw)
    if view.nbytes:
        sock.sendall(view)


def _recv_exact(sock: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < buf.nbytes:
        n = sock.recv_into(buf[got:])
        if n == 0:
            raise WireError("the peer closed the connection")
        got += n


def recv(sock: socket.socket, max_payload: int,
         alloc: Callable[[dict[str, Any], int], Any] | None = None) -> tuple[dict[str, Any], Any]:
    """One message: (header, payload). Raises WireError on a closed or malformed stream.

    ``alloc(header, n)``: where a payload of ``n`` bytes (1..max_payload) is received, a writable
    buffer of exactly ``n`` bytes that the receiver owns and that need not be zeroed first (say
    ``np.empty``: the evaluator's 32 MiB of logits per call go straight into the array it computes
    on), returned as the payload; without it, a bytearray. Every byte is still received."""
    pre = bytearray(_PREFIX.size)
    _recv_exact(sock, memoryview(pre))
    n, zero = _PREFIX.unpack(pre)
    if n > MAX_HEADER or zero != 0:
        raise WireError(f"malformed message prefix ({n}, {zero})")
    raw = bytearray(n)
    _recv_exact(sock, memoryview(raw))
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise WireError(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError("the header is not a JSON object")
    size = header.get("nbytes", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > max_payload:
        raise WireError(f"payload size {size!r} is outside 0..{max_payload}")
    if not size:
        return header, bytearray()
    payload = alloc(header, size) if alloc is not None else bytearray(size)
    view = memoryview(payload).cast("B")
    if view.nbytes != size or view.readonly:
        raise WireError(f"the receive buffer holds {view.nbytes} bytes, not the {size} announced")
    _recv_exact(sock, view)
    return header, payload


def reuse_freed_memory(keep_mb: int = 2048) -> bool:
    """glibc: serve large blocks from the heap, and keep up to ``keep_mb`` of freed memory for the
    next ones (``M_MMAP_MAX`` 0, ``M_TRIM_THRESHOLD``), instead of a fresh mapping per block that
    the kernel zeroes and faults in page by page and takes back at ``free``. The evaluation's CPU
    processes allocate and free the same few tensors of logits (32 MiB on cpu-tiny) on every call:
    this makes a small model's forward about a third cheaper and changes no arithmetic. The
    process keeps its peak memory until it exits. False where the C library has no such setting."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, int(keep_mb) << 20) == 1   # M_MMAP_MAX, M_TRIM_THRESHOLD
    except (OSError, AttributeError, ValueError):
        return False


def listen(path: str) -> socket.socket:
    """A listening socket at ``path`` (mode 0600; an old file there is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(1)
    return s


def connect(path: str, wait_s: float = 60.0, what: str = "evaluator") -> socket.socket:
    """Connect to ``path``, retrying while the listener (``what``) is not up yet."""
    deadline = time.monotonic() + wait_s
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.monotonic() > deadline:
                raise WireError(f"no {what} listening at {path} after {wait_s:g}s") from None
            time.sleep(0.05)
