"""Candidate snapshots: content-addressed files under the lab.

``<lab>/objects/ab/cdef…`` holds each distinct file content once; a candidate is a map
from relative path to content hash, and its id is a hash of that map. ``materialize``
writes a candidate's files to a private folder for a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

from .errors import CandidateError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def candidate_id(files: Mapping[str, str]) -> str:
    """Deterministic id of a snapshot: the same files always give the same id."""
    return "c-" + sha256(json.dumps(sorted(files.items())).encode())[:12]


class Store:
    """Content-addressed object store of one lab."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)

    def _obj(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        path = self._obj(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)   # atomic: a crash leaves no half-written object
        return digest

    def get(self, digest: str) -> bytes:
        path = self._obj(digest)
        if not path.exists():
            raise CandidateError(f"object {digest} is missing from {self.root / 'objects'}; the lab is incomplete")
        data = path.read_bytes()
        if sha256(data) != digest:
            raise CandidateError(f"object {path} is corrupt (hash mismatch); delete it and re-create the candidate")
        return data

    def snapshot(self, files: Mapping[str, bytes | str]) -> dict[str, str]:
        """Store file contents; returns {path: digest}."""
        out = {}
        for rel, content in sorted(files.items()):
            if os.path.isabs(rel) or ".." in Path(rel).parts:
                raise CandidateError(f"file path {rel!r} must be relative and inside the candidate")
            out[rel] = self.put(content.encode() if isinstance(content, str) else content)
        return out

    def read(self, files: Mapping[str, str]) -> dict[str, str]:
        """{path: text} of a snapshot."""
        return {rel: self.get(d).decode() for rel, d in sorted(files.items())}

    def materialize(self, files: Mapping[str, str], dest: str | os.PathLike) -> Path:
        """Write the snapshot's files into dest (created fresh)."""
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for rel, digest in files.items():
            p = dest / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(self.get(digest))
        return dest
