"""nanochat harness, data side: manifest checks, tokenizer cache, token bytes, packing, loader,
and resumable downloads against a loopback HTTP server. No network, no GPU."""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TASK_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "nanochat"
sys.path.insert(0, str(TASK_DIR))

from autolab.errors import DataError  # noqa: E402
from nanochat_harness import data as D  # noqa: E402
from nanochat_harness import loader as L  # noqa: E402
from nanochat_harness import tokenizer as T  # noqa: E402

WORDS = ("the kernel scheduler runs each task on a cpu while python calls functions in modules; "
         "größe naïve café 東京 — données, 42 1999 3.14 x=y+1 <tag> {json: true}").split()


def _docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(rng.randint(1, 4)))
            for _ in range(n)]


def _write_parquet(path: Path, texts: list[str], row_group: int = 50) -> None:
    pq.write_table(pa.table({"text": texts, "source": ["synthetic"] * len(texts)}), path, row_group_size=row_group)


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "corpus"
    root.mkdir()
    splits = {"train": _docs(300, 1), "val": _docs(40, 2), "hidden_val": _docs(40, 3)}
    manifest = {"name": "synth", "version": 1, "splits": {}}
    for name, texts in splits.items():
        f = root / f"{name}.parquet"
        _write_parquet(f, texts)
        manifest["splits"][name] = {"file": f.name, "documents": len(texts),
                                    "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, splits


# ----------------------------------------------------------------------------- manifest

def test_manifest_verifies(corpus):
    root, _ = corpus
    c = D.verify_corpus(root)
    assert c.name == "synth" and set(c.sha256) == {"train", "val", "hidden_val"}
    assert c.train_sha256 == hashlib.sha256((root / "train.parquet").read_bytes()).hexdigest()


def test_manifest_mismatch_names_file_and_fix(corpus):
    root, _ = corpus
    with open(root / "val.parquet", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(DataError) as e:
        D.verify_corpus(root)
    msg = str(e.value)
    assert "val.parquet" in msg and "does not match" in msg and "fix" in msg


def test_manifest_missing_file(corpus):
    root, _ = corpus
    (root / "hidden_val.parquet").unlink()
    with pytest.raises(DataError, match=r"hidden_val\.parquet: missing.*fix"):
        D.verify_corpus(root)


def test_missing_corpus_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist; fix"):
        D.verify_corpus(tmp_path / "nope")


def test_verification_is_cached_by_size_and_mtime(corpus, monkeypatch):
    root, _ = corpus
    D.verify_corpus(root)
    monkeypatch.setattr(D, "sha256_file", lambda p: pytest.fail(f"re-hashed {p}"))
    D.verify_corpus(root)                               # all hits: nothing hashed
    f = root / "val.parquet"
    f.write_bytes(f.read_bytes())                       # same bytes, new mtime: hashed again
    monkeypatch.setattr(D, "sha256_file", lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest())
    D.verify_corpus(root)


def test_real_corpus_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path))
    if not D.DEFAULT_SOURCE.is_dir():
        pytest.skip(f"no corpus at {D.DEFAULT_SOURCE}")
    c = D.verify_corpus()
    manifest = json.loads((D.DEFAULT_SOURCE / "manifest.json").read_text())
    assert c.train_sha256 == manifest["splits"]["train"]["sha256"]


# ----------------------------------------------------------------------------- tokenizer and caches

def test_prepare_caches_tokenizer_and_tokens(corpus, monkeypatch):
    root, splits = corpus
    t0 = time.monotonic()
    a = D.prepare(root, vocab_size=320, tokenizer_train_bytes=20000, train_docs=200)
    first = time.monotonic() - t0
    tok = T.load(a["tokenizer"])
    assert tok.get_vocab_size() == 320 and a["bos_id"] == tok.token_to_id(T.BOS) == 0
    # the second call reuses everything: no tokenizer training, no encoding, fast
    with monkeypatch.context() as m:
        m.setattr(T, "train_bpe", lambda *a, **k: pytest.fail("tokenizer trained again"))
        m.setattr(D, "_encode_split", lambda *a, **k: pytest.fail("tokens encoded again"))
        t0 = time.monotonic()
        b = D.prepare(root, vocab_size=320, tokenizer_train_bytes=20000, train_docs=200)
        assert time.monotonic() - t0 < max(0.5, first / 2)
    assert a["tokenizer"] == b["tokenizer"] and a["splits"] == b["splits"]
    text = splits["val"][0]
    assert T.load(b["tokenizer"]).encode(text).ids == tok.encode(text).ids
    tokens, offsets = D.load_split(b["splits"]["train"])
    assert tokens.dtype == np.uint16 and offsets.dtype == np.int64 and len(offsets) == 201
    assert offsets[-1] == len(tokens)
    # the cached tokens are exactly the tokenizer's ids of each document, in file order
    for i in (0, 57, 199):
        assert tokens[offsets[i]:offsets[i + 1]].tolist() == tok.encode(splits["train"][i]).ids
    # the cache key follows the corpus hash and the vocab
    c = D.prepare(root, vocab_size=300, tokenizer_train_bytes=20000, train_docs=200)
    assert c["cache_dir"] != a["cache_dir"]
    assert a["corpus"]["train_sha256"] == hashlib.sha256((root / "train.parquet").read_bytes()).hexdigest()


def test_tokenizer_learns_from_train_only(corpus):
    root, splits = corpus
    (root / "val.parquet").unlink()
    _write_parquet(root / "val.parquet", ["zzqqxxjj " * 50] * 40)       # a val-only word
    m = json.loads((root / "manifest.json").read_text())
    m["splits"]["val"]["sha256"] = hashlib.sha256((root / "val.parquet").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(m))
    out = D.prepare(root, vocab_size=400)
    vocab = T.load(out["tokenizer"]).get_vocab()
    assert not any("zzqq" in piece for piece in vocab)


def test_token_bytes(corpus):
    root, splits = corpus
    out = D.prepare(root, vocab_size=320)
    tok, tb = T.load(out["tokenizer"]), np.load(out["token_bytes"])
    assert tb.shape == (320,) and tb[out["bos_id"]] == 0
    assert (np.delete(tb, out["bos_id"]) > 0).all()
    for text in splits["val"][:10] + ["naïve 東京 — x", "\n\n  \t"]:
        ids = tok.encode(text).ids
        assert int(tb[ids].sum()) == len(text.encode("utf-8"))
        assert tok.decode(ids) == text


# ----------------------------------------------------------------------------- packing

def _random_docs(n: int, seed: int, lo: int = 1, hi: int = 60):
    rng = np.random.default_rng(seed)
    lens = rng.integers(lo, hi, n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lens)
    tokens = rng.integers(1, 1000, offsets[-1]).astype(np.uint16)    # 0 is BOS
    return tokens, offsets


@pytest.mark.parametrize("chunk", [0, 24])
def test_best_fit_packing_invariants(chunk):
    tokens, offsets = _random_docs(300, 0)
    spans = L.document_spans(offsets, chunk)
    T_ = 32
    p = L.Packer(tokens, spans, T_ + 1, bos_id=0, seed=7, buffer_docs=16)
    row = np.empty(T_ + 1, dtype=np.int64)
    used_whole = 0
    for _ in range(200):
        segs: list = []
        assert p.fill_row(row, segs)
        assert row.shape == (T_ + 1,) and row[0] == 0                  # exactly T+1, starts with BOS
        pos = 0
        for k, (i, at, n) in enumerate(segs):
            assert at == pos and n >= 1                                # contiguous, no gaps: no padding
            s, e = spans[i]
            doc = np.concatenate([[0], tokens[s:e]])
            assert (row[at:at + n] == doc[:n]).all()                   # a document's start, in order
            if n < len(doc):
                assert k == len(segs) - 1                              # only the row's last piece is cropped
            else:
                used_whole += 1
            pos += n
        assert pos == T_ + 1
        assert (row[1:] != 0).sum() + (row == 0).sum() == T_ + 1
    assert used_whole > 0
    if chunk:
        assert (spans[:, 1] - spans[:, 0]).max() <= chunk
        # pieces of one document tile it exactly
        assert spans[0, 0] == 0 and (spans[1:, 0] == spans[:-1, 1]).all() and spans[-1, 1] == offsets[-1]


def test_packing_prefers_the_longest_fit():
    tokens = np.arange(1, 101, dtype=np.uint16)
    offsets = np.array([0, 10, 30, 35, 100], dtype=np.int64)           # lengths 10, 20, 5, 65 (+1 BOS each)
    p = L.Packer(tokens, L.document_spans(offsets), 33, bos_id=0, buffer_docs=8, shuffle=False, epochs=1)
    segs: list = []
    p.fill_row(np.empty(33, dtype=np.int64), segs)
    assert [(i, n) for i, _, n in segs] == [(1, 21), (0, 11), (2, 1)]  # 21 fits best, then 11, then crop to 1


def test_epochs_reshuffle_deterministically():
    tokens, offsets = _random_docs(50, 1)
    spans = L.document_spans(offsets)

    def order(seed):
        p = L.Packer(tokens, spans, 65, bos_id=0, seed=seed, buffer_docs=1)
        it = p._documents()
        return [next(it) for _ in range(100)]

    a, b, c = order(3), order(3), order(4)
    assert a == b and a != c
    assert sorted(a[:50]) == sorted(a[50:]) == list(range(50)) and a[:50] != a[50:]


def test_eval_rows_are_fixed_and_bounded():
    tokens, offsets = _random_docs(100, 2)
    r1 = L.eval_rows(tokens, offsets, 16, 20, bos_id=0)
    r2 = L.eval_rows(tokens, offsets, 16, 20, bos_id=0)
    assert r1.shape == (20, 17) and (r1 == r2).all() and (r1[:, 0] == 0).all()
    assert L.eval_rows(tokens, offsets, 16, 10_000, bos_id=0) is None


def test_train_loader_batches():
    import torch

    tokens, offsets = _random_docs(40, 3)
    it = L.TrainLoader(tokens, offsets, batch_size=4, seq_len=16, bos_id=0, seed=1, prefetch=2)
    first = None
    for n, (x, y) in enumerate(it):
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert (x[:, 0] == 0).all() and (x[:, 1:] == y[:, :-1]).all()
        first = first if first is not None else x.clone()
        if n == 200:                                                  # many epochs of this tiny set
            break
    assert it.epoch >= 2 and it.batches == 201
    it.close()
    again = L.TrainLoader(tokens, offsets, batch_size=4, seq_len=16, bos_id=0, seed=1)
    assert (next(again)[0] == first).all()                            # same seed, same data
    again.close()


def _served(tmp_path, tokens, offsets, seed=1, chunk=0, buffer_docs=16):
    from nanochat_harness.data_server import TrainDataServer

    (tmp_path / "split").mkdir(exist_ok=True)
    paths = {"tokens": str(tmp_path / "split" / "t.tokens.npy"), "offsets": str(tmp_path / "split" / "t.offsets.npy")}
    np.save(paths["tokens"], tokens)
    np.save(paths["offsets"], offsets)
    repo = Path(__file__).resolve().parents[2]
    return TrainDataServer(train=paths, bos_id=0, seed=seed, chunk_tokens=chunk, buffer_docs=buffer_docs, prefetch=2,
                           hdir=tmp_path, env={"PYTHONPATH": f"{TASK_DIR}:{repo}"}).start()


@pytest.mark.parametrize("chunk", [0, 24])
def test_the_data_process_serves_the_in_process_loaders_batches(tmp_path, chunk):
    """The trusted data process (a real subprocess, over its socket) hands out exactly the batches
    the in-process loader packs for the same seed, epochs included; building a client sends no
    data; the first batch asked for is stamped by the data process itself, after the client's
    clock hook ran; a wrong token is refused; and nothing of it is left once stopped."""
    import os
    import torch

    tokens, offsets = _random_docs(60, 4)
    srv = _served(tmp_path, tokens, offsets, seed=7, chunk=chunk)
    try:
        hooked: list[float] = []
        it = L.ServedLoader(str(srv.socket_path), srv.token, batch_size=3, seq_len=20,
                            on_first_batch=lambda: hooked.append(time.monotonic()))
        time.sleep(0.3)
        assert srv.report().get("first_request_monotonic") is None and srv.report()["batches"] == 0
        ref = L.TrainLoader(tokens, offsets, batch_size=3, seq_len=20, bos_id=0, seed=7, chunk_tokens=chunk,
                            buffer_docs=16, prefetch=2)
        for n in range(120):                                        # several epochs of this small set
            (x, y), (rx, ry) = next(it), next(ref)
            assert x.dtype == y.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
            assert torch.equal(x, rx) and torch.equal(y, ry) and it.epoch == ref.epoch, n
            if n == 0:
                after_first = time.monotonic()
        assert it.batches == 120 and it.epoch >= 2
        ref.close()
        rep = srv.report()
        assert hooked and hooked[0] <= rep["first_request_monotonic"] <= after_first
        with pytest.raises(RuntimeError, match="wrong token"):
            L.ServedLoader(str(srv.socket_path), "not-the-token", batch_size=3, seq_len=20)
        it.close()
    finally:
        srv.stop()
    assert srv.proc.poll() is not None and not srv.socket_path.parent.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(srv.proc.pid, 0)                                  # its whole process group is gone
    rep = srv.report()                                              # the final report, written at the stop
    assert rep["refused"] == 1 and rep["connections"] == 1
    assert 120 <= rep["batches"] <= 120 + 2 * 4 and rep["tokens"] == rep["batches"] * 3 * 20   # <= 2 x prefetch (4) ahead


# ----------------------------------------------------------------------------- downloads

class _Shards(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    drop_once: set[str] = set()       # first full request for these names dies half-way
    log: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802
        name = self.path.lstrip("/")
        rng = self.headers.get("Range")
        type(self).log.append((name, rng))
        if name not in self.files:
            self.send_error(404)
            return
        body, start = self.files[name], 0
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if name in self.drop_once and not rng:
            self.drop_once.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *a):
        pass


@pytest.fixture()
def server(tmp_path):
    shards = {}
    for i in range(3):
        f = tmp_path / f"src{i}.parquet"
        _write_parquet(f, _docs(30, 10 + i))
        shards[f"shard_{i:05d}.parquet"] = f.read_bytes()
    _Shards.files, _Shards.drop_once, _Shards.log = shards, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Shards)
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", shards
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_partial_file(server, tmp_path):
    url, shards = server
    dest = tmp_path / "dl"
    dest.mkdir()
    name = "shard_00001.parquet"
    (dest / (name + ".part")).write_bytes(shards[name][:1000])       # a download cut off earlier
    _Shards.drop_once = {"shard_00002.parquet"}                      # and one cut off now
    sha = {n: hashlib.sha256(b).hexdigest() for n, b in shards.items()}
    paths = D.download_shards(url, dest, [0, 1, 2], sha256=sha, backoff_s=0.01)
    assert [p.name for p in paths] == sorted(shards)
    for p in paths:
        assert p.read_bytes() == shards[p.name]
    assert (name, "bytes=1000-") in _Shards.log                      # resumed with a Range request
    assert any(n == "shard_00002.parquet" and r and r != "bytes=0-" for n, r in _Shards.log)
    assert not list(dest.glob("*.part"))
    n_requests = len(_Shards.log)
    D.download_shards(url, dest, [0, 1, 2], sha256=sha)              # complete: nothing fetched
    assert len(_Shards.log) == n_requests
    # a folder of shards works as a corpus: last shard val, the one before hidden_val
    c = D.verify_corpus(dest)
    assert c.files["val"][0].name == "shard_00002.parquet" and c.files["hidden_val"][0].name == "shard_00001.parquet"


def test_download_bad_hash_and_missing(server, tmp_path):
    url, _ = server
    with pytest.raises(DataError, match="does not match the expected"):
        D.download_shards(url, tmp_path / "dl", [0], sha256="0" * 64, backoff_s=0.01)
    assert not list((tmp_path / "dl").glob("shard_*"))               # neither the shard nor a part is left
    with pytest.raises(DataError, match="HTTP 404"):
        D.download_shards(url, tmp_path / "dl", [7], backoff_s=0.01)


def test_prepare_data_from_a_url(server, tmp_path, monkeypatch):
    url, shards = server
    monkeypatch.setenv("AUTOLAB_CACHE", str(tmp_path / "cache"))
    out = D.prepare_data({"vocab_size": 300, "num_shards": 1, "val_shard": 2, "hidden_val_shard": 1}, source=url,
                         progress=False)
    files = {k: [Path(p).name for p in v] for k, v in out["corpus"]["files"].items()}
    assert files == {"train": ["shard_00000.parquet"], "val": ["shard_00002.parquet"],
                     "hidden_val": ["shard_00001.parquet"]}
    assert out["corpus"]["train_sha256"] == hashlib.sha256(shards["shard_00000.parquet"]).hexdigest()
    manifest = json.loads((Path(out["corpus"]["root"]) / "manifest.json").read_text())
    assert manifest["splits"]["val"]["files"] == ["shard_00002.parquet"]
    n_requests = len(_Shards.log)
    again = D.prepare_data({"vocab_size": 300, "num_shards": 1, "val_shard": 2, "hidden_val_shard": 1}, source=url,
                           progress=False)
    assert again["splits"] == out["splits"] and len(_Shards.log) == n_requests    # all cached, nothing fetched
