"""Best-fit packing of documents into rows, and the prefetching train loader.

Rules (the same for training and evaluation):

* every document is prefixed with BOS; a row holds ``T + 1`` tokens (inputs and targets
  overlap by one) and starts with BOS;
* to fill a row, take from a buffer of documents the longest one that fits in the room left;
  when none fits, take the shortest and crop it to the room left (its rest is dropped); no
  padding, ever;
* ``doc_chunk_tokens`` > 0 first cuts longer documents into consecutive pieces of at most that
  many tokens (each piece is a document of its own), so that presets with short rows still read
  whole documents instead of only their first ``T`` tokens;
* training reads documents in an order reshuffled every epoch from the run seed; evaluation
  reads them in file order, once.

In a run, training batches come from the trusted data process (``data_server``), which packs
them with :class:`Packer`; the train process holds a :class:`ServedLoader` (its client) and
cannot read the train token cache. :class:`TrainLoader` packs in-process from token arrays
(tests, scripts outside a run: the same batches for the same seed).
"""

from __future__ import annotations

import bisect
import json
import queue
import socket
import struct
import threading
import time
from typing import Callable, Iterator

import numpy as np


def document_spans(offsets: np.ndarray, chunk_tokens: int = 0) -> np.ndarray:
    """(n, 2) int64 array of [start, end) token ranges, one per document (or document piece)."""
    starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    keep = ends > starts                                     # empty documents carry nothing
    starts, ends = starts[keep], ends[keep]
    if chunk_tokens and chunk_tokens > 0:
        pieces = (ends - starts + chunk_tokens - 1) // chunk_tokens
        doc = np.repeat(np.arange(len(starts)), pieces)
        first = np.repeat(np.cumsum(pieces) - pieces, pieces)
        k = np.arange(len(doc)) - first                      # piece number within its document
        s = starts[doc] + k * chunk_tokens
        e = np.minimum(s + chunk_tokens, ends[doc])
        return np.stack([s, e], axis=1)
    return np.stack([starts, ends], axis=1)


class Packer:
    """Fills rows of ``row_len`` tokens from documents by best-fit packing (see module doc)."""

    def __init__(self, tokens: np.ndarray, spans: np.ndarray, row_len: int, bos_id: int, seed: int = 0,
                 buffer_docs: int = 256, shuffle: bool = True, epochs: int | None = None):
        if len(spans) == 0:
            raise ValueError("no documents to pack")
        self.tokens, self.spans, self.row_len, self.bos = tokens, spans, int(row_len), int(bos_id)
        self.seed, self.buffer_docs, self.shuffle, self.epochs = int(seed), max(1, int(buffer_docs)), shuffle, epochs
        self.epoch = 0
        self._lens: list[int] = []          # buffered documents' lengths (with BOS), sorted
        self._ids: list[int] = []           # their span indices, aligned with _lens
        self._stream = self._documents()

    def _documents(self) -> Iterator[int]:
        n, e = len(self.spans), 0
        while self.epochs is None or e < self.epochs:
            self.epoch = e
            order = np.random.default_rng([self.seed, e]).permutation(n) if self.shuffle else np.arange(n)
            yield from order.tolist()
            e += 1

    def _refill(self) -> None:
        while len(self._lens) < self.buffer_docs:
            i = next(self._stream, None)
            if i is None:
                return
            n = int(self.spans[i, 1] - self.spans[i, 0]) + 1
            k = bisect.bisect_left(self._lens, n)
            self._lens.insert(k, n)
            self._ids.insert(k, i)

    def fill_row(self, out: np.ndarray, segments: list | None = None) -> bool:
        """Write one row into ``out`` (length row_len). ``segments``, if given, gets one
        (document index, position in row, tokens taken incl. BOS) per piece. False when the
        documents ran out (only with a finite number of epochs); the row is then incomplete."""
        pos, R = 0, self.row_len
        while pos < R:
            self._refill()
            if not self._lens:
                return False
            room = R - pos
            k = bisect.bisect_right(self._lens, room) - 1    # the longest document that fits
            if k < 0:
                k = 0                                        # none fits: crop the shortest
            n = min(self._lens.pop(k), room)
            i = self._ids.pop(k)
            s = int(self.spans[i, 0])
            out[pos] = self.bos
            out[pos + 1:pos + n] = self.tokens[s:s + n - 1]
            if segments is not None:
                segments.append((i, pos, n))
            pos += n
        return True

    def rows(self, n_rows: int) -> np.ndarray | None:
        """A (n_rows, row_len) int64 array, or None when the documents ran out."""
        out = np.empty((n_rows, self.row_len), dtype=np.int64)
        for r in range(n_rows):
            if not self.fill_row(out[r]):
                return None
        return out


def eval_rows(tokens: np.ndarray, offsets: np.ndarray, seq_len: int, n_rows: int, bos_id: int,
              chunk_tokens: int = 0, buffer_docs: int = 256) -> np.ndarray | None:
    """The fixed evaluation rows: (n_rows, seq_len + 1), packed from the split in file order,
    one pass. None when the split holds fewer rows than asked."""
    packer = Packer(tokens, document_spans(offsets, chunk_tokens), seq_len + 1, bos_id,
                    buffer_docs=buffer_docs, shuffle=False, epochs=1)
    return packer.rows(n_rows)


class TrainLoader:
    """Iterator of (x, y) int64 tensors of shape (B, T), forever. Batches are packed in a
    background thread into a small queue (pinned memory and non-blocking copies on CUDA), so a
    training step never waits for data, not at an epoch boundary either."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, batch_size: int, seq_len: int, bos_id: int,
                 device: str = "cpu", seed: int = 0, chunk_tokens: int = 0, buffer_docs: int = 256,
                 prefetch: int = 4, on_first_batch: Callable[[], None] | None = None):
        import torch

        self.B, self.T, self.device = int(batch_size), int(seq_len), torch.device(device)
        self.packer = Packer(tokens, document_spans(offsets, chunk_tokens), self.T + 1, bos_id, seed=seed,
                             buffer_docs=buffer_docs, shuffle=True)
        self._pin = self.device.type == "cuda"
        self._q: queue.Queue = queue.Queue(maxsize=max(1, int(prefetch)))
        self._stop = threading.Event()
        self._on_first = on_first_batch
        self.batches = 0                      # batches handed out
        self.epoch = 0                        # epoch of the packer when the last batch was built
        self._thread = threading.Thread(target=self._work, name="nanochat-loader", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        import torch

        try:
            while not self._stop.is_set():
                rows = self.packer.rows(self.B)
                x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
                y = torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))
                if self._pin:
                    x, y = x.pin_memory(), y.pin_memory()
                item = (x, y, self.packer.epoch)
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._q.put(e)

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self):
        if self.batches == 0 and self._on_first is not None:
            self._on_first()
        item = self._q.get()
        if isinstance(item, BaseException):
            raise RuntimeError("the nanochat train loader's packing thread failed") from item
        x, y, self.epoch = item
        self.batches += 1
        if self.device.type != "cpu":
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x, y

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # a packing thread still inside torch when the interpreter exits aborts the process
            # ("terminate called without an active exception"); let it finish its batch
            self._thread.join(timeout=10)


_HEADER = struct.Struct("<IIQ")       # the data process's batch header: kind, epoch, payload bytes (data_server)
_CREDIT = struct.Struct("<I")


class ServedLoader:
    """Iterator of (x, y) int64 tensors of shape (B, T), forever, from the run's trusted data
    process (``data_server``) over its Unix socket: the same batches :class:`TrainLoader` packs
    for the same seed. Building it sends only the shape; the first ``next()`` asks for data (the
    data process stamps that moment: the clock's start seen from outside), then a background
    thread keeps ``prefetch`` batches requested and ``prefetch`` received ahead (int32 rows
    received straight into pinned memory on CUDA, one copy to the device, widened there), so a
    training step does not wait for data."""

    def __init__(self, address: str, token: str, batch_size: int, seq_len: int, device: str = "cpu",
                 prefetch: int = 4, on_first_batch: Callable[[], None] | None = None, connect_timeout_s: float = 120.0):
        import torch

        self.B, self.T, self.device = int(batch_size), int(seq_len), torch.device(device)
        self._pin = self.device.type == "cuda"
        self._prefetch = max(1, int(prefetch))
        self._q: queue.Queue = queue.Queue(maxsize=self._prefetch)
        self._stop = threading.Event()
        self._on_first = on_first_batch
        self._thread: threading.Thread | None = None
        self.batches = 0                      # batches handed out
        self.epoch = 0                        # epoch of the packer when the last batch was built
        self._sock = self._connect(address, connect_timeout_s)
        try:
            self._sock.sendall((json.dumps({"token": token, "batch_size": self.B, "seq_len": self.T}) + "\n").encode())
            answer = self._line()
        except OSError as e:
            self._sock.close()
            raise RuntimeError(f"nanochat_harness: the train data process went away during the hello ({e})") from None
        if not answer.get("ok"):
            self._sock.close()
            raise RuntimeError(f"nanochat_harness: the train data process refused the loader: {answer.get('error')}")
        if answer.get("dtype") != "int32" or int(answer.get("row_len", -1)) != self.T + 1:
            self._sock.close()
            raise RuntimeError(f"nanochat_harness: unexpected answer from the train data process: {answer}")

    @staticmethod
    def _connect(address: str, timeout_s: float) -> socket.socket:
        end = time.monotonic() + timeout_s
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(address)
                return s
            except (FileNotFoundError, ConnectionRefusedError) as e:
                s.close()
                if time.monotonic() > end:
                    raise RuntimeError(f"nanochat_harness: no train data process at {address} after {timeout_s:g} s "
                                       f"({e}); start the run through nanochat_harness.runner") from None
                time.sleep(0.05)

    def _line(self) -> dict:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = self._sock.recv(1)
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
        return json.loads(buf)

    def _recv_into(self, view: memoryview) -> None:
        got, n = 0, view.nbytes
        while got < n:
            k = self._sock.recv_into(view[got:], n - got)
            if k == 0:
                raise OSError("the train data process closed the connection")
            got += k

    def _work(self) -> None:
        import torch

        header = bytearray(_HEADER.size)
        try:
            self._sock.sendall(_CREDIT.pack(self._prefetch))
            while not self._stop.is_set():
                self._recv_into(memoryview(header))
                kind, epoch, nbytes = _HEADER.unpack(header)
                if kind != 1:
                    text = bytearray(min(nbytes, 1 << 16))
                    self._recv_into(memoryview(text))
                    raise RuntimeError(f"the train data process failed: {text.decode(errors='replace')}")
                if nbytes != self.B * (self.T + 1) * 4:
                    raise RuntimeError(f"a batch of {nbytes} bytes from the train data process; expected "
                                       f"{self.B * (self.T + 1) * 4}")
                rows = torch.empty((self.B, self.T + 1), dtype=torch.int32, pin_memory=self._pin)
                self._recv_into(memoryview(rows.numpy()).cast("B"))
                if self._pin:
                    item = (rows, int(epoch))              # widened on the device, after one copy
                else:
                    item = (rows[:, :-1].to(torch.int64, memory_format=torch.contiguous_format),
                            rows[:, 1:].to(torch.int64, memory_format=torch.contiguous_format), int(epoch))
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                self._sock.sendall(_CREDIT.pack(1))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            if not self._stop.is_set():
                self._q.put(e)

    def __iter__(self) -> "ServedLoader":
        return self

    def __next__(self):
        import torch

        if self._thread is None:
            if self._stop.is_set():
                raise StopIteration
            if self._on_first is not None:
                self._on_first()
            self._thread = threading.Thread(target=self._work, name="nanochat-loader", daemon=True)
            self._thread.start()
        item = self._q.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"the nanochat train loader failed: {item}") from item
        if self._pin:
            rows, self.epoch = item
            g = rows.to(self.device, non_blocking=True)
            x = g[:, :-1].to(torch.int64, memory_format=torch.contiguous_format)
            y = g[:, 1:].to(torch.int64, memory_format=torch.contiguous_format)
        else:
            x, y, self.epoch = item
            if self.device.type != "cpu":
                x, y = x.to(self.device), y.to(self.device)
        self.batches += 1
        return x, y

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._sock.close()
