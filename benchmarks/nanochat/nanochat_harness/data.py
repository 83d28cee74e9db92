"""Data for the nanochat benchmark: find the corpus, check its hashes, read its text, download
public web-text shards, and build (once, cached) the tokenizer and the token caches.

Corpus layout: a folder with ``manifest.json`` (techtext's format: ``splits.<name>.file`` and
``splits.<name>.sha256`` for ``train``, ``val`` and ``hidden_val``; a split may instead list
``files`` and ``sha256`` as lists) and parquet files with a ``text`` column. A folder of shards
without a manifest (what :func:`download_shards` leaves) works too: the last shard is ``val``,
the one before it ``hidden_val``, the rest ``train``.

Cache layout (``$AUTOLAB_CACHE``, default ``~/.cache/autolab``)::

    nanochat/verified.json                          file -> (size, mtime_ns, sha256)
    nanochat/<corpus>-<train sha[:12]>/bpe-v<vocab>-s<sample>/
        tokenizer.json  token_bytes.npy  meta.json
        train-<subset>.tokens.npy / .offsets.npy    uint16 tokens, int64 document offsets
        val-<sha[:12]>.tokens.npy / .offsets.npy    (and hidden_val-...)

Everything is written to a temporary name and renamed, under a file lock, so concurrent runs
never see half a file and never build the same thing twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from autolab.errors import DataError
from autolab.harnesskit import atomic_write_bytes, atomic_write_json  # noqa: F401  (runner, speedrun use them from here)

HARNESS_DIR = Path(__file__).resolve().parent
TASK_DIR = HARNESS_DIR.parent
REPO_ROOT = TASK_DIR.parent.parent           # the folder that holds benchmarks/
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "techtext"
SPLITS = ("train", "val", "hidden_val")
CACHE_VERSION = 1                            # bump when the cache format changes


# ----------------------------------------------------------------------------- small helpers

def cache_root() -> Path:
    """``$AUTOLAB_CACHE`` or ``~/.cache/autolab``."""
    return Path(os.environ.get("AUTOLAB_CACHE") or Path.home() / ".cache" / "autolab").expanduser()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the block; waits for other holders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


def atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[nanochat data] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the corpus

@dataclass(frozen=True)
class Corpus:
    """A verified corpus: its folder, the files of each split and each split's sha256
    (a multi-file split's hash is the sha256 of its files' hashes joined by newlines)."""

    name: str
    root: Path
    files: dict[str, tuple[Path, ...]]
    sha256: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train_sha256(self) -> str:
        return self.sha256["train"]


def locate_corpus(source: str | os.PathLike | None = None) -> Path:
    """The corpus folder: ``source``, else ``$AUTOLAB_DATA``, else ``<repo>/../shared/data/techtext``."""
    raw = source or os.environ.get("AUTOLAB_DATA") or DEFAULT_SOURCE
    root = Path(raw).expanduser().resolve()
    if not root.is_dir():
        how = ("--source" if source else "$AUTOLAB_DATA" if os.environ.get("AUTOLAB_DATA") else "the default location")
        raise DataError(
            f"corpus folder {root} (from {how}) does not exist; fix: point `autolab data nanochat --source DIR` "
            f"or $AUTOLAB_DATA at a folder holding manifest.json and the train/val/hidden_val parquet files, "
            f"or download web-text shards with nanochat_harness.data.download_shards"
        )
    return root


def _verified_hash(path: Path, progress: bool = False) -> str:
    """sha256 of a file, remembered in the cache keyed by (path, size, mtime) so an unchanged
    file is not re-hashed on every run."""
    st = path.stat()
    key = str(path.resolve())
    book_path = cache_root() / "nanochat" / "verified.json"
    try:
        book = json.loads(book_path.read_text())
    except (OSError, ValueError):
        book = {}
    hit = book.get(key)
    if hit and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns:
        return hit["sha256"]
    _say(progress, f"hashing {path.name} ({st.st_size / 1e6:.1f} MB)")
    digest = sha256_file(path)
    book_path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(book_path.with_name(".verified.lock")):
        try:
            book = json.loads(book_path.read_text())
        except (OSError, ValueError):
            book = {}
        book[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        atomic_write_json(book_path, book)
    return digest


def _combined(hashes: list[str]) -> str:
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def verify_corpus(source: str | os.PathLike | None = None, progress: bool = False) -> Corpus:
    """Find the corpus and check every split file against manifest.json. Raises DataError that
    names the file and the fix when a file is missing or its hash does not match."""
    root = locate_corpus(source)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        return _shard_folder_corpus(root, progress)
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as e:
        raise DataError(f"{manifest_path}: not valid JSON ({e}); fix: restore the corpus's manifest.json") from None
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise DataError(f"{manifest_path}: key 'splits' is missing; fix: restore the corpus's manifest.json")
    files: dict[str, tuple[Path, ...]] = {}
    shas: dict[str, str] = {}
    for split in SPLITS:
        entry = splits.get(split)
        if not isinstance(entry, dict):
            raise DataError(f"{manifest_path}: key 'splits.{split}' is missing; fix: the corpus needs "
                            f"train, val and hidden_val splits (restore manifest.json)")
        names = entry.get("files") or [entry.get("file")]
        want = entry.get("sha256")
        want = want if isinstance(want, list) else [want]
        if not all(isinstance(n, str) for n in names) or len(want) != len(names):
            raise DataError(f"{manifest_path}: 'splits.{split}' needs 'file' and 'sha256' (or equal-length "
                            f"'files' and 'sha256' lists); fix: restore manifest.json")
        got = []
        for name, w in zip(names, want):
            p = root / name
            if not p.is_file():
                raise DataError(f"{p}: missing (listed in {manifest_path} under splits.{split}); fix: restore the "
                                f"file from the corpus's source, or point --source/$AUTOLAB_DATA at a complete copy")
            h = _verified_hash(p, progress)
            if w is not None and h != w:
                raise DataError(f"{p}: sha256 {h} does not match manifest.json ({w}); the file is corrupt or was "
                                f"changed; fix: restore it from the corpus's source (re-copy or re-download)")
            got.append(h)
        files[split] = tuple(root / n for n in names)
        shas[split] = _combined(got)
    return Corpus(str(manifest.get("name", root.name)), root, files, shas, manifest)


def _shard_folder_corpus(root: Path, progress: bool) -> Corpus:
    shards = sorted(p for p in root.glob("*.parquet") if p.is_file())
    if len(shards) < 3:
        raise DataError(f"{root}: no manifest.json and only {len(shards)} parquet shard(s); fix: add a manifest.json "
                        f"(see {DEFAULT_SOURCE / 'manifest.json'} for the format) or download at least 3 shards "
                        f"(the last is val, the one before it hidden_val)")
    files = {"train": tuple(shards[:-2]), "hidden_val": (shards[-2],), "val": (shards[-1],)}
    shas = {k: _combined([_verified_hash(p, progress) for p in v]) for k, v in files.items()}
    return Corpus(root.name, root, files, shas, {"name": root.name, "shards": [p.name for p in shards]})


def read_texts(files: Iterable[Path], max_bytes: int | None = None, max_docs: int | None = None) -> list[str]:
    """The ``text`` column of parquet files, in file order; stops after ``max_docs`` documents or
    once ``max_bytes`` UTF-8 bytes are read (a deterministic prefix sample)."""
    import pyarrow.parquet as pq

    out: list[str] = []
    nbytes = 0
    for f in files:
        pf = pq.ParquetFile(f)
        if "text" not in pf.schema_arrow.names:
            raise DataError(f"{f}: has no 'text' column (columns: {pf.schema_arrow.names}); fix: use parquet "
                            f"files with the web-text schema (a string column named 'text')")
        for g in range(pf.num_row_groups):
            for t in pf.read_row_group(g, columns=["text"]).column("text").to_pylist():
                if t is None:
                    continue
                out.append(t)
                nbytes += len(t.encode("utf-8"))
                if (max_docs and len(out) >= max_docs) or (max_bytes and nbytes >= max_bytes):
                    return out
    return out


# ----------------------------------------------------------------------------- downloads

def _shard_name(s: str | int) -> str:
    return f"shard_{s:05d}.parquet" if isinstance(s, int) else str(s)


def download_shards(base_url: str, dest: str | os.PathLike, shards: Iterable[str | int],
                    sha256: dict[str, str] | str | None = None, retries: int = 5, timeout: float = 60.0,
                    progress: bool = False, backoff_s: float = 1.0) -> list[Path]:
    """Download parquet shards ``<base_url>/<name>`` into ``dest`` (ints become
    ``shard_00012.parquet``). A partial file (``<name>.part``) is resumed with an HTTP Range
    request; network errors are retried ``retries`` times with backoff; each finished shard is
    checked against ``sha256`` (a {name: hex} dict, or one hex string for a single shard) when
    given and must hold a ``text`` column. A shard already complete is skipped. Returns the paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = [_shard_name(s) for s in shards]
    if isinstance(sha256, str):
        if len(names) != 1:
            raise DataError("download_shards: sha256 given as one string for several shards; fix: pass {name: sha256}")
        sha256 = {names[0]: sha256}
    sha256 = sha256 or {}
    out = []
    for name in names:
        final = dest / name
        url = base_url.rstrip("/") + "/" + name
        with file_lock(dest / f".{name}.lock"):
            if final.exists() and (name not in sha256 or sha256_file(final) == sha256[name]):
                _say(progress, f"{name}: already here")
                out.append(final)
                continue
            for fresh_try in range(2):          # a hash mismatch after a resume: start once from scratch
                part = dest / (name + ".part")
                _fetch_resumable(url, part, retries, timeout, progress, backoff_s)
                want = sha256.get(name)
                got = sha256_file(part) if want else None
                if want and got != want:
                    part.unlink(missing_ok=True)
                    if fresh_try == 0:
                        _say(progress, f"{name}: sha256 mismatch, downloading again from scratch")
                        continue
                    raise DataError(f"{url}: downloaded file's sha256 {got} does not match the expected {want}; "
                                    f"the server's file differs from the one you pinned; fix: check the URL and the "
                                    f"expected hash (the partial file was deleted)")
                break
            _check_parquet(part, url)
            os.replace(part, final)
            out.append(final)
    return out


def _fetch_resumable(url: str, part: Path, retries: int, timeout: float, progress: bool, backoff_s: float) -> None:
    last_err: Exception | None = None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if have and resp.status == 206:
                    crange = resp.headers.get("Content-Range", "")
                    if not crange.startswith(f"bytes {have}-"):
                        raise DataError(f"{url}: server answered range {crange!r} to a request for bytes {have}-")
                    mode = "ab"
                    _say(progress, f"{part.name}: resuming at {have} bytes")
                else:
                    mode, have = "wb", 0        # server ignored the Range header: start over
                length = resp.headers.get("Content-Length")
                expect = have + int(length) if length is not None else None
                with open(part, mode) as fh:
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        fh.write(chunk)
                size = part.stat().st_size
                if expect is not None and size < expect:
                    raise ConnectionError(f"connection closed at {size} of {expect} bytes")
                return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:          # nothing left to send: the part file is complete
                return
            if e.code in (404, 403, 401, 410):
                raise DataError(f"{url}: HTTP {e.code} {e.reason}; fix: check the base URL and shard names") from None
            last_err = e
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            if isinstance(e, DataError):
                raise
            last_err = e
        if attempt < retries:
            _say(progress, f"{part.name}: {last_err}; retrying ({attempt + 1}/{retries})")
            time.sleep(backoff_s * (2 ** attempt))
    raise DataError(f"{url}: download failed after {retries + 1} attempts ({last_err}); the partial file {part} is "
                    f"kept; fix: check the network and run the same command again to resume")


def write_manifest(folder: str | os.PathLike, train: list[str], val: str, hidden_val: str,
                   name: str | None = None) -> Path:
    """Write ``manifest.json`` (techtext's format, with a ``files`` list for train) for parquet
    shards already in ``folder``; hashes are computed now. Returns its path."""
    folder = Path(folder)
    splits: dict[str, Any] = {}
    for split, names in (("train", list(train)), ("val", [val]), ("hidden_val", [hidden_val])):
        for n in names:
            if not (folder / n).is_file():
                raise DataError(f"{folder / n}: missing; fix: download it before writing the manifest")
        splits[split] = {"files": names, "sha256": [sha256_file(folder / n) for n in names]}
    path = folder / "manifest.json"
    atomic_write_json(path, {"name": name or folder.name, "version": 1, "splits": splits})
    return path


def fetch_web_shards(base_url: str, num_shards: int = 8, val_shard: str | int | None = None,
                     hidden_val_shard: str | int | None = None, dest: str | os.PathLike | None = None,
                     progress: bool = True) -> Path:
    """Download ``num_shards`` training shards (``shard_00000.parquet`` …) plus the val and
    hidden_val shards (defaults: the next two after the training shards; autoresearch pins its
    val shard as the last one of the data set, so pass ``val_shard`` to match it) into ``dest``
    (default ``$AUTOLAB_CACHE/data/<hash of the url>``) and write its manifest. Returns the folder."""
    val = _shard_name(num_shards if val_shard is None else val_shard)
    hidden = _shard_name(num_shards + 1 if hidden_val_shard is None else hidden_val_shard)
    train = [_shard_name(i) for i in range(num_shards)]
    if val in train or hidden in train or val == hidden:
        raise DataError(f"val shard {val} / hidden_val shard {hidden} overlap the training shards or each other; "
                        f"fix: choose val_shard and hidden_val_shard outside 0..{num_shards - 1}")
    folder = Path(dest) if dest else cache_root() / "data" / hashlib.sha256(base_url.encode()).hexdigest()[:16]
    download_shards(base_url, folder, train + [val, hidden], progress=progress)
    manifest = folder / "manifest.json"
    try:
        old = json.loads(manifest.read_text())["splits"]
        same = old["train"]["files"] == train and old["val"]["files"] == [val] and old["hidden_val"]["files"] == [hidden]
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if not same:
        write_manifest(folder, train, val, hidden, name=f"web-{folder.name}")
    return folder


def _check_parquet(path: Path, url: str) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        path.unlink(missing_ok=True)
        raise DataError(f"{url}: not a readable parquet file ({e}); the partial file was deleted; fix: check the URL") from None
    if "text" not in names:
        path.unlink(missing_ok=True)
        raise DataError(f"{url}: parquet file has no 'text' column ({names}); fix: use web-text shards with a 'text' column")


# ----------------------------------------------------------------------------- tokens

def _encode_split(tok, texts: list[str], chunk_docs: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """uint16 tokens of every document, concatenated, and int64 offsets (n_docs + 1)."""
    parts: list[np.ndarray] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    enc = getattr(tok, "encode_batch_fast", tok.encode_batch)
    for i in range(0, len(texts), chunk_docs):
        for j, e in enumerate(enc(texts[i:i + chunk_docs], add_special_tokens=False)):
            ids = np.asarray(e.ids, dtype=np.uint16)
            parts.append(ids)
            lengths[i + j] = len(ids)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return tokens, offsets


def _build_split_cache(stem: Path, texts_fn, tok, progress: bool, what: str) -> dict[str, Any]:
    tokens_p, offsets_p = stem.with_suffix(".tokens.npy"), stem.with_suffix(".offsets.npy")
    with file_lock(stem.with_suffix(".lock")):
        if not (tokens_p.exists() and offsets_p.exists()):
            t0 = time.monotonic()
            texts = texts_fn()
            _say(progress, f"tokenizing {what}: {len(texts)} documents")
            tokens, offsets = _encode_split(tok, texts)
            atomic_save_npy(offsets_p, offsets)   # offsets first: tokens' presence marks completion
            atomic_save_npy(tokens_p, tokens)
            _say(progress, f"{what}: {len(tokens):,} tokens in {time.monotonic() - t0:.1f}s")
    return {"tokens": str(tokens_p), "offsets": str(offsets_p)}


def prepare(source: str | os.PathLike | None = None, vocab_size: int = 8192, tokenizer_train_bytes: int = 0,
            train_bytes: int = 0, train_docs: int = 0, progress: bool = False) -> dict[str, Any]:
    """Verify the corpus and build (or reuse) the tokenizer and the token caches.

    ``tokenizer_train_bytes``: the tokenizer learns from this many bytes of the start of the
    train split (0: all of it). ``train_bytes`` / ``train_docs``: only this prefix of the train
    split is tokenized for training (0: all). Returns paths, hashes and timings (see
    :func:`prepare_data`)."""
    from . import tokenizer as T

    t_start = time.monotonic()
    if not 256 < vocab_size <= 65536:
        raise DataError(f"vocab_size {vocab_size} is out of range; fix: set vocab_size in the preset "
                        f"between 257 and 65536 (tokens are stored as uint16)")
    corpus = verify_corpus(source, progress)
    t_verify = time.monotonic() - t_start
    sample = int(tokenizer_train_bytes or 0)
    base = cache_root() / "nanochat" / f"{corpus.name}-{corpus.train_sha256[:12]}"
    tok_dir = base / f"bpe-v{vocab_size}-s{sample or 'all'}-c{CACHE_VERSION}"
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok_path, tb_path, meta_path = tok_dir / "tokenizer.json", tok_dir / "token_bytes.npy", tok_dir / "meta.json"

    t0 = time.monotonic()
    with file_lock(tok_dir / ".tokenizer.lock"):
        if not (tok_path.exists() and tb_path.exists() and meta_path.exists()):
            texts = read_texts(corpus.files["train"], max_bytes=sample or None)
            nb = sum(len(t.encode()) for t in texts)
            _say(progress, f"training BPE tokenizer (vocab {vocab_size}) on {nb / 1e6:.1f} MB of {corpus.name} train")
            tok = T.train_bpe(texts, vocab_size)
            del texts
            atomic_save_npy(tb_path, T.token_bytes_table(tok))
            atomic_write_bytes(tok_path, tok.to_str().encode())
            atomic_write_json(meta_path, {"vocab_size": tok.get_vocab_size(), "bos_id": tok.token_to_id(T.BOS),
                                          "sample_bytes": nb, "corpus": corpus.name,
                                          "train_sha256": corpus.train_sha256, "cache_version": CACHE_VERSION})
    t_tok = time.monotonic() - t0
    meta = json.loads(meta_path.read_text())
    tok = T.load(tok_path)

    t0 = time.monotonic()
    subset = f"b{int(train_bytes)}" if train_bytes else (f"d{int(train_docs)}" if train_docs else "all")
    caches = {
        "train": _build_split_cache(
            tok_dir / f"train-{subset}", lambda: read_texts(corpus.files["train"], max_bytes=train_bytes or None,
                                                            max_docs=train_docs or None), tok, progress, "train"),
    }
    for split in ("val", "hidden_val"):
        caches[split] = _build_split_cache(tok_dir / f"{split}-{corpus.sha256[split][:12]}",
                                           lambda s=split: read_texts(corpus.files[s]), tok,
                                           progress, split)
    t_cache = time.monotonic() - t0
    return {
        "corpus": {"name": corpus.name, "root": str(corpus.root), "train_sha256": corpus.train_sha256,
                   "val_sha256": corpus.sha256["val"], "hidden_val_sha256": corpus.sha256["hidden_val"],
                   "files": {k: [str(p) for p in v] for k, v in corpus.files.items()}},
        "cache_dir": str(tok_dir),
        "tokenizer": str(tok_path),
        "token_bytes": str(tb_path),
        "vocab_size": int(meta["vocab_size"]),
        "bos_id": int(meta["bos_id"]),
        "train_subset": subset,
        "splits": caches,
        "timings": {"verify_s": round(t_verify, 3), "tokenizer_s": round(t_tok, 3), "token_caches_s": round(t_cache, 3),
                    "total_s": round(time.monotonic() - t_start, 3)},
    }


def prepare_data(preset_settings: dict, source: str | None = None, progress: bool = True) -> dict:
    """Entry point of ``autolab data nanochat``: prepare everything a preset needs.

    ``preset_settings``: the preset's settings (``vocab_size``, ``tokenizer_train_bytes``,
    ``train_bytes``, ``train_docs``; and for a URL ``source``: ``num_shards``, ``val_shard``,
    ``hidden_val_shard``). ``source``: a corpus folder, or an ``http(s)://`` base URL of web-text
    parquet shards, fetched first with :func:`fetch_web_shards`. Returns a dict with
    ``corpus`` (name, root, train/val/hidden_val sha256), ``tokenizer``, ``token_bytes``,
    ``vocab_size``, ``bos_id``, ``splits`` (``train``/``val``/``hidden_val`` -> ``tokens``,
    ``offsets`` paths) and ``timings``."""
    s = dict(preset_settings or {})
    if source and str(source).startswith(("http://", "https://")):
        source = str(fetch_web_shards(str(source), int(s.get("num_shards", 8)), s.get("val_shard"),
                                      s.get("hidden_val_shard"), progress=progress))
    return prepare(source=source, vocab_size=int(s.get("vocab_size", 8192)),
                   tokenizer_train_bytes=int(s.get("tokenizer_train_bytes", 0) or 0),
                   train_bytes=int(s.get("train_bytes", 0) or 0), train_docs=int(s.get("train_docs", 0) or 0),
                   progress=progress)


def load_split(paths: dict[str, str], mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(tokens uint16, offsets int64) of a split prepared by :func:`prepare`."""
    try:
        tokens = np.load(paths["tokens"], mmap_mode="r" if mmap else None, allow_pickle=False)
        offsets = np.load(paths["offsets"], allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: token cache missing; fix: run `autolab data nanochat` again") from None
    return tokens, offsets
