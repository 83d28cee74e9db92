"""The research log: an append-only SQLite file (WAL mode) and DataFrame views of it.

Every record version is one row appended to ``records``; the latest version of each
(kind, id) is the record's current state. Appends are single short transactions, so
many processes can write at once and a ``kill -9`` at any moment loses at most the
row being written. DataFrames are views, never the store.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from .errors import LogError, SchemaVersionError
from .records import RECORD_TYPES, Candidate, Idea, Insight, Purpose, Run, Verdict, _Record, now, record_from_dict

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL,
    ts TEXT NOT NULL, pid INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind_id ON records(kind, id, seq);
CREATE TABLE IF NOT EXISTS llm_calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, model TEXT NOT NULL, purpose TEXT,
    thread TEXT, idea_id TEXT, ok INTEGER NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER,
    cost REAL, latency_s REAL, attempt INTEGER, error TEXT, request TEXT, response TEXT,
    state TEXT, owner TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, pid INTEGER NOT NULL,
    kind TEXT NOT NULL, body TEXT NOT NULL
);
"""


def _migrate_llm_calls(conn: sqlite3.Connection) -> None:
    """Logs written before in-flight rows existed get the two columns (NULL state = finished)."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(llm_calls)")}
    for col in ("state", "owner"):
        if col not in have:
            conn.execute(f"ALTER TABLE llm_calls ADD COLUMN {col} TEXT")


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def _process_alive(owner: Any) -> bool:
    """Is the process that started an LLM call still running? (Another host's counts as alive.)"""
    if not isinstance(owner, dict) or not owner.get("pid"):
        return False
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner["pid"])
    if owner.get("start") is not None:
        return _proc_start(pid) == owner["start"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _quantile(xs: list[float], q: float) -> float | None:
    """Linear-interpolated quantile of sorted values (None when empty)."""
    if not xs:
        return None
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 4)


def _title(c: Candidate, ideas: dict) -> str:
    """A candidate's title in the views: its idea's, else the one its meta gives (an ablation's
    variant, which has no parent), else "seed" for a root."""
    if c.idea_id in ideas:
        return ideas[c.idea_id].title
    if isinstance(c.meta, dict) and c.meta.get("title"):
        return str(c.meta["title"])
    return "seed" if c.parent_id is None else ""


class ResearchLog:
    """Append-only store of records, LLM calls and loop events at ``<lab>/log.db``."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        self._local = threading.local()
        self._check_schema()

    # ------------------------------------------------------------------ connection
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            try:
                conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            except sqlite3.Error as e:
                raise LogError(f"cannot open the research log {self.path}: {e}; check the folder is writable") from e
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as e:
                conn.close()
                raise LogError(f"{self.path} is not a readable research log ({e}); move it aside and start a new "
                               "lab, or restore it from a copy") from None
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _write(self, sql: str, params: Iterable[Any]) -> int:
        conn = self._conn()
        for attempt in range(8):
            try:
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.execute(sql, tuple(params))
                conn.execute("COMMIT")
                return int(cur.lastrowid or 0)
            except sqlite3.OperationalError as e:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if "locked" not in str(e) and "busy" not in str(e):
                    raise LogError(f"writing to {self.path} failed: {e}") from e
                time.sleep(0.05 * (attempt + 1))
        raise LogError(f"{self.path} stayed locked for too long; is another process holding a write transaction?")

    def _check_schema(self) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(stmt)
            _migrate_llm_calls(conn)
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (now(),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        found = int(row[0]) if row else SCHEMA_VERSION
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has schema version {found}, newer than this autolab understands ({SCHEMA_VERSION}); "
                "upgrade autolab (pip install -U autolab) or open the log with the version that wrote it"
            )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ meta
    def set_meta(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            return default
        try:
            return json.loads(row[0])
        except json.JSONDecodeError:
            return row[0]

    @property
    def schema_version(self) -> int:
        return int(self.get_meta("schema_version"))

    # ------------------------------------------------------------------ records
    def append(self, record: _Record) -> _Record:
        """Append one record version; returns the record for chaining."""
        self._write(
            "INSERT INTO records (kind, id, state, ts, pid, body) VALUES (?, ?, ?, ?, ?, ?)",
            (record.kind, record.id, record.state.value, now(), os.getpid(), record.to_json()),
        )
        return record

    def get(self, kind: str, id: str) -> _Record | None:
        row = self._conn().execute(
            "SELECT body FROM records WHERE kind=? AND id=? ORDER BY seq DESC LIMIT 1", (kind, id)
        ).fetchone()
        return record_from_dict(kind, json.loads(row[0])) if row else None

    def latest(self, kind: str) -> list[_Record]:
        """The latest version of every record of one kind, in order of first appearance."""
        if kind not in RECORD_TYPES:
            raise ValueError(f"unknown record kind {kind!r}; known: {sorted(RECORD_TYPES)}")
        rows = self._conn().execute(
            """SELECT r.body FROM records r
               JOIN (SELECT id, MAX(seq) AS mx, MIN(seq) AS mn FROM records WHERE kind=? GROUP BY id) g
               ON r.seq = g.mx ORDER BY g.mn""",
            (kind,),
        ).fetchall()
        return [record_from_dict(kind, json.loads(b)) for (b,) in rows]

    def history(self, kind: str, id: str) -> list[_Record]:
        rows = self._conn().execute("SELECT body FROM records WHERE kind=? AND id=? ORDER BY seq", (kind, id)).fetchall()
        return [record_from_dict(kind, json.loads(b)) for (b,) in rows]

    def ideas_list(self) -> list[Idea]:
        return self.latest("idea")  # type: ignore[return-value]

    def candidates_list(self) -> list[Candidate]:
        return self.latest("candidate")  # type: ignore[return-value]

    def runs_list(self) -> list[Run]:
        return self.latest("run")  # type: ignore[return-value]

    def verdicts_list(self) -> list[Verdict]:
        return self.latest("verdict")  # type: ignore[return-value]

    def insights_list(self) -> list[Insight]:
        return self.latest("insight")  # type: ignore[return-value]

    # ------------------------------------------------------------------ events and LLM calls
    def event(self, kind: str, **body: Any) -> None:
        self._write("INSERT INTO events (ts, pid, kind, body) VALUES (?, ?, ?, ?)",
                    (now(), os.getpid(), kind, json.dumps(body, default=str)))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT seq, ts, pid, kind, body FROM events" + (" WHERE kind=?" if kind else "") + " ORDER BY seq"
        rows = self._conn().execute(q, (kind,) if kind else ()).fetchall()
        return [{"seq": s, "ts": ts, "pid": pid, "kind": k, **json.loads(b)} for s, ts, pid, k, b in rows]

    # ------------------------------------------------------------------ LLM calls
    # One row per attempt. A call is recorded when it starts (state 'in_flight', ok=0) and
    # completed when it returns ('ok' or 'error'); a row whose process died meanwhile is marked
    # 'interrupted' by reap_llm_calls(). Every row counts toward the caps (a provider may bill
    # a request whose answer never arrived).
    def llm_call_start(self, *, model: str, purpose: str = "", thread: str | None = None,
                       idea_id: str | None = None, attempt: int = 1, request: Any = None) -> int:
        """Record an attempt as it starts; returns the row's seq for :meth:`llm_call_end`."""
        return self._write(
            """INSERT INTO llm_calls (ts, model, purpose, thread, idea_id, ok, prompt_tokens, completion_tokens,
               cost, latency_s, attempt, error, request, response, state, owner)
               VALUES (?,?,?,?,?,0,0,0,0.0,NULL,?,NULL,?,NULL,'in_flight',?)""",
            (now(), model, purpose, thread, idea_id, attempt, json.dumps(request, default=str),
             json.dumps(_this_process())),
        )

    def llm_call_end(self, seq: int, *, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0,
                     cost: float = 0.0, latency_s: float = 0.0, error: str | None = None, response: Any = None) -> None:
        """Complete the row :meth:`llm_call_start` made."""
        self._write(
            """UPDATE llm_calls SET ok=?, prompt_tokens=?, completion_tokens=?, cost=?, latency_s=?, error=?,
               response=?, state=? WHERE seq=?""",
            (int(ok), prompt_tokens, completion_tokens, cost, latency_s, error,
             json.dumps(response, default=str), "ok" if ok else "error", seq),
        )

    def log_llm_call(self, *, model: str, ok: bool, purpose: str = "", thread: str | None = None,
                     idea_id: str | None = None, prompt_tokens: int = 0, completion_tokens: int = 0,
                     cost: float = 0.0, latency_s: float = 0.0, attempt: int = 1, error: str | None = None,
                     request: Any = None, response: Any = None) -> None:
        """Record a finished attempt in one row (start and end at once)."""
        self._write(
            """INSERT INTO llm_calls (ts, model, purpose, thread, idea_id, ok, prompt_tokens, completion_tokens,
               cost, latency_s, attempt, error, request, response, state, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (now(), model, purpose, thread, idea_id, int(ok), prompt_tokens, completion_tokens, cost, latency_s,
             attempt, error, json.dumps(request, default=str), json.dumps(response, default=str),
             "ok" if ok else "error", json.dumps(_this_process())),
        )

    def reap_llm_calls(self) -> int:
        """Mark in-flight LLM calls whose process has ended as 'interrupted'; returns how many."""
        rows = self._conn().execute("SELECT seq, owner FROM llm_calls WHERE state='in_flight'").fetchall()
        n = 0
        for seq, owner in rows:
            try:
                who = json.loads(owner or "null")
            except json.JSONDecodeError:
                who = None
            if _process_alive(who):
                continue
            pid = who.get("pid") if isinstance(who, dict) else "?"
            self._write("UPDATE llm_calls SET state='interrupted', error=? WHERE seq=? AND state='in_flight'",
                        (f"interrupted: the process (pid {pid}) ended before the answer arrived", seq))
            n += 1
        return n

    def llm_totals(self) -> dict[str, float]:
        """Totals over every recorded attempt (in flight and interrupted ones included: the caps count them)."""
        row = self._conn().execute(
            "SELECT COUNT(*), COALESCE(SUM(cost),0), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0), "
            "COALESCE(SUM(state='in_flight'),0), COALESCE(SUM(ok=0 AND COALESCE(state,'error')!='in_flight'),0) FROM llm_calls"
        ).fetchone()
        return {"calls": row[0], "cost": row[1], "prompt_tokens": row[2], "completion_tokens": row[3],
                "in_flight": row[4], "failed": row[5]}

    def llm_usage(self) -> list[dict[str, Any]]:
        """LLM usage per model: calls, ok, failed, interrupted, in flight, tokens, cost, latency p50/p95
        (seconds, over answered calls)."""
        rows = self._conn().execute(
            "SELECT model, ok, COALESCE(state, CASE WHEN ok THEN 'ok' ELSE 'error' END), prompt_tokens, "
            "completion_tokens, cost, latency_s FROM llm_calls ORDER BY seq").fetchall()
        by: dict[str, dict[str, Any]] = {}
        lat: dict[str, list[float]] = {}
        for model, ok, state, pt, ct, cost, latency in rows:
            u = by.setdefault(model, {"model": model, "calls": 0, "ok": 0, "failed": 0, "interrupted": 0,
                                      "in_flight": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
            u["calls"] += 1
            key = {"ok": "ok", "interrupted": "interrupted", "in_flight": "in_flight"}.get(state, "failed")
            u[key] += 1
            u["prompt_tokens"] += int(pt or 0)
            u["completion_tokens"] += int(ct or 0)
            u["cost"] += float(cost or 0.0)
            if ok and latency is not None:
                lat.setdefault(model, []).append(float(latency))
        for model, u in by.items():
            xs = sorted(lat.get(model, []))
            u["latency_p50_s"] = _quantile(xs, 0.50)
            u["latency_p95_s"] = _quantile(xs, 0.95)
        return list(by.values())

    # ------------------------------------------------------------------ integrity
    def integrity_check(self) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    # ------------------------------------------------------------------ DataFrame views
    def runs(self):
        """One row per run (latest state), MLflow-like columns: params.*, metrics.*, tags.*."""
        import pandas as pd

        cands = {c.id: c for c in self.candidates_list()}
        rows = []
        for r in self.runs_list():
            c = cands.get(r.candidate_id)
            row: dict[str, Any] = {
                "run_id": r.id, "candidate_id": r.candidate_id, "state": r.state.value, "task": r.task,
                "start_time": r.started_at, "end_time": r.ended_at, "notebook": r.notebook,
                "params.preset": r.preset, "params.seed": r.seed, "params.purpose": r.purpose,
                "params.attempt": r.attempt, "tags.thread": c.thread if c else None,
                "tags.parent_id": c.parent_id if c else None, "tags.idea_id": c.idea_id if c else None,
                "tags.executor": r.executor, "tags.slot": r.slot,
                "tags.hardware": r.hardware,   # as the run recorded it (None: unrecorded; Ledger.hardware_of adds assumptions)
                "tags.error": (f"{r.error.get('ename')}: {r.error.get('evalue', '')}" if r.error else None),
            }
            row.update({f"metrics.{k}": v for k, v in r.metrics.items() if isinstance(v, (int, float))})
            row.update({f"metrics.time.{k}": v for k, v in r.timings.items() if isinstance(v, (int, float))})
            rows.append(row)
        return pd.DataFrame(rows, columns=None if rows else ["run_id", "candidate_id", "state", "params.seed"])

    def ideas(self):
        import pandas as pd

        rows = [{
            "idea_id": i.id, "state": i.state.value, "title": i.title, "tags.source": i.source,
            "tags.thread": i.thread, "tags.parent_id": i.parent_id, "hypothesis": i.hypothesis,
            "plan": i.plan, "params.edit": json.dumps(i.edit) if i.edit else None, "created_at": i.created_at,
        } for i in self.ideas_list()]
        return pd.DataFrame(rows, columns=None if rows else ["idea_id", "state", "title"])

    def verdicts(self):
        import pandas as pd

        rows = [{
            "verdict_id": v.id, "candidate_id": v.candidate_id, "parent_id": v.parent_id, "state": v.state.value,
            "metrics.candidate_mean": v.candidate_mean, "metrics.parent_mean": v.parent_mean,
            "metrics.effect": v.effect, "metrics.p_value": v.p_value, "params.n_candidate": v.n_candidate,
            "params.n_parent": v.n_parent, "tags.failed_checks": ",".join(c["name"] for c in v.failed_checks),
            "reason": v.reason, "created_at": v.created_at,
        } for v in self.verdicts_list()]
        return pd.DataFrame(rows, columns=None if rows else ["verdict_id", "candidate_id", "state"])

    def llm_calls(self):
        import pandas as pd

        return pd.read_sql_query("SELECT * FROM llm_calls ORDER BY seq", self._conn())

    def _metric(self) -> tuple[str, str]:
        return self.get_meta("metric", "metric"), self.get_meta("direction", "minimize")

    def leaderboard(self, preset: str | None = None):
        """Candidates ranked by their mean metric over complete runs (screening and confirmation):
        the raw numbers. Which candidate is *best* is the ledger's answer (``Ledger.leaderboard()``
        ranks this table by it), never this table's first row."""
        import pandas as pd

        metric, direction = self._metric()
        runs = self.runs()
        cols = ["candidate_id", "state", "title", "tags.thread", "tags.parent_id", "n", f"metrics.{metric}",
                f"metrics.{metric}_std", f"metrics.{metric}_best"]
        key = f"metrics.{metric}"
        if runs.empty or key not in runs:
            return pd.DataFrame(columns=cols)
        ok = runs[(runs["state"] == "COMPLETE") & runs[key].notna()]
        ok = ok[ok["params.purpose"] != Purpose.REDTEAM.value]
        if preset:
            ok = ok[ok["params.preset"] == preset]
        if ok.empty:
            return pd.DataFrame(columns=cols)
        g = ok.groupby("candidate_id")[key]
        board = pd.DataFrame({"n": g.count(), key: g.mean(), f"{key}_std": g.std(),
                              f"{key}_best": g.min() if direction == "minimize" else g.max()}).reset_index()
        cands = {c.id: c for c in self.candidates_list()}
        ideas = {i.id: i for i in self.ideas_list()}
        board["state"] = [cands[c].state.value if c in cands else "" for c in board["candidate_id"]]
        board["title"] = [_title(cands[c], ideas) if c in cands else "" for c in board["candidate_id"]]
        board["tags.thread"] = [cands[c].thread if c in cands else "" for c in board["candidate_id"]]
        board["tags.parent_id"] = [cands[c].parent_id if c in cands else None for c in board["candidate_id"]]
        board = board.sort_values(key, ascending=(direction == "minimize")).reset_index(drop=True)
        return board[cols]

    def lineage(self):
        """One row per candidate: its parent, idea, thread, depth in the tree and mean metric."""
        import pandas as pd

        metric, _ = self._metric()
        cands = self.candidates_list()
        ideas = {i.id: i for i in self.ideas_list()}
        board = self.leaderboard()
        means = dict(zip(board["candidate_id"], board[f"metrics.{metric}"])) if not board.empty else {}
        by_id = {c.id: c for c in cands}

        def depth(c: Candidate) -> int:
            d, seen = 0, set()
            while c.parent_id and c.parent_id in by_id and c.id not in seen:
                seen.add(c.id)
                c, d = by_id[c.parent_id], d + 1
            return d

        rows = [{
            "candidate_id": c.id, "parent_id": c.parent_id, "idea_id": c.idea_id,
            "title": _title(c, ideas),
            "tags.thread": c.thread, "state": c.state.value, "depth": depth(c),
            "merge_of": ",".join(c.meta.get("merge_of", [])) or None, f"metrics.{metric}": means.get(c.id),
            "created_at": c.created_at,
        } for c in cands]
        return pd.DataFrame(rows, columns=None if rows else ["candidate_id", "parent_id", "state", "depth"])

    def export(self, folder: str | os.PathLike, fmt: str = "parquet") -> list[Path]:
        """Write every view to ``folder`` as parquet or csv; returns the files written."""
        if fmt not in ("parquet", "csv"):
            raise ValueError(f"export format {fmt!r} is not supported; use 'parquet' or 'csv'")
        out = Path(folder)
        if out.exists() and not out.is_dir():
            raise LogError(f"{out} is a file; export writes one file per view into a folder: pass a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LogError(f"cannot create the export folder {out}: {e.strerror}; pick a writable location") from None
        written = []
        for name in ("runs", "ideas", "leaderboard", "lineage", "verdicts", "llm_calls"):
            df = getattr(self, name)()
            path = out / f"{name}.{fmt}"
            if fmt == "parquet":
                df.to_parquet(path, index=False)
            else:
                df.to_csv(path, index=False)
            written.append(path)
        return written

    def __repr__(self) -> str:
        return f"ResearchLog({str(self.path)!r})"
