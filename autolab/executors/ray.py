"""The Ray executor: every run is one Ray task on a cluster of machines.

    ex = RayExecutor(address="head-node:6379")       # or get_executor("ray", address=...)
    autolab.loop(lab, iterations=20, executor=ex)

A task reserves ``num_gpus=job.limits.gpus`` (GPU presets) or ``num_cpus=job.limits.cpu_threads``
(CPU presets). The Job itself travels with the task; the worker writes the candidate's files into a
fresh temporary folder, re-roots the job there (``notebook.on_worker``), builds its command
with the same function as the local executor (``notebook.command``), runs it in its own process
session under the job's timeout, and sends back the executed notebook, the outcome file and
the job's ``collect`` files (the result JSON). The driver alone writes the research log
(``run.finish_run`` stores the files).

Failures of the cluster (a node died, a worker process crashed, an object was lost) come back
as ``JobResult(returncode=None, killed_reason="worker lost")``: the run is recorded KILLED and
the loop re-queues its seed, a bounded number of times (``run.MAX_ATTEMPTS``). Ray's own task
retries are off by default (``max_retries=0``) so that every attempt is visible in the log.

Requirements on every node: the same autolab install (``pip install 'autolab[ray]'``) and the
task's data (``autolab data TASK``). The task folder is used in place where its path exists on
the worker; otherwise its files are shipped with the task. See docs/ray.md.

Ray is imported lazily, when an executor is built: ``import autolab.executors.ray`` works
without Ray installed.
"""

from __future__ import annotations

import collections
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from ..errors import AutolabError
from .base import Executor, Job, JobResult
from .notebook import command, files_to_collect, on_worker

INSTALL_HINT = "pip install 'autolab[ray]'"
LOST = "worker lost"               # run.RETRYABLE: the loop re-queues these
_TAIL_CHARS = 20000
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".git", ".pytest_cache"}
_MAX_SHIPPED_FILE = 50 * 2**20     # task-folder files larger than this are not shipped
_MAX_SHIPPED_TOTAL = 256 * 2**20   # nor a task folder larger than this (it must then exist on every node)

# Started next to each job on the worker: when the Ray worker process that runs the job dies
# (node lost, driver gone, task cancelled), it is re-parented; then the job's whole process
# session is killed, so that no run goes on burning a GPU that Ray already gave to another.
_REAPER = """
import os, signal, sys, time
parent, session = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    time.sleep(0.5)
try:
    os.killpg(session, signal.SIGKILL)
except OSError:
    pass
"""


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise AutolabError(f"the ray executor needs Ray on this machine and on every node: {INSTALL_HINT}") from e
    return ray


# ---------------------------------------------------------------------------- on the worker

def _safe_rel(rel: str) -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"refusing a shipped path outside its folder: {rel!r}")
    return p


def _write_tree(root: Path, files: dict) -> None:
    for rel, data in files.items():
        p = root / _safe_rel(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _work_root() -> Path:
    """Where jobs get their private folders on a worker: ``$TMPDIR/autolab-ray-<uid>/``."""
    root = Path(tempfile.gettempdir()) / f"autolab-ray-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def _clean_stale(root: Path) -> None:
    """Remove folders of jobs whose Ray worker process died without cleaning up (node or
    driver lost). A folder is named ``<run id>-<worker pid>-<random>``."""
    for d in root.iterdir():
        try:
            pid = int(d.name.rsplit("-", 2)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, OSError):
            continue


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _run_job(job: Job, cpus: float, task_box: list) -> dict:
    """The Ray task: one papermill execution of ``job`` in a private folder on the worker.

    ``task_box`` is ``[]`` or ``[ObjectRef of the task folder's files]``; the reference is
    nested in a list so that Ray fetches the files only when this worker needs them."""
    import ray

    host = socket.gethostname()
    node_ip = ray.util.get_node_ip_address()
    node = ray.get_runtime_context().get_node_id()[:8]
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    gpus = job.limits.gpus
    slot = f"ray:{node_ip}:{node}:" + (f"gpu:{','.join(gpu_ids)}" if gpus else f"cpu:{cpus}")
    out = {"returncode": None, "wall_s": 0.0, "timed_out": False, "killed_reason": "", "output_tail": "",
           "slot": slot, "host": host, "files": {}}
    root = _work_root()
    _clean_stale(root)
    work = Path(tempfile.mkdtemp(prefix=f"{job.run_id}-{os.getpid()}-", dir=root))
    try:
        cand, run_dir = work / "candidate", work / "run"
        cand.mkdir()
        run_dir.mkdir()
        _write_tree(cand, job.files)
        task_dir, notebook = Path(job.cwd), Path(job.notebook)
        if not (task_dir.is_dir() and notebook.is_file()):
            if not task_box:
                raise FileNotFoundError(f"{notebook} does not exist on {host} and the task folder was too large to "
                                        "ship: put the repository at the same path on every node")
            shipped = work / "task"
            _write_tree(shipped, ray.get(task_box[0]))
            notebook = shipped / notebook.relative_to(task_dir)
            task_dir = shipped
        local = on_worker(job, notebook=notebook, cwd=task_dir, run_dir=run_dir, candidate_dir=cand)
        argv = command(local)

        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)   # Ray sets it to the task's CPUs; runs see what the local executor gives
        env.update(job.env)
        if gpus:
            # Ray has pinned this worker's CUDA_VISIBLE_DEVICES to the GPUs it assigned
            env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(gpu_ids)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""

        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=local.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        reaper = subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), str(proc.pid)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        chunks: collections.deque[str] = collections.deque()
        size = [0]

        def read() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                chunks.append(line.decode(errors="replace"))
                size[0] += len(chunks[-1])
                while size[0] > 2 * _TAIL_CHARS and len(chunks) > 1:
                    size[0] -= len(chunks.popleft())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=job.limits.timeout_s)
        except subprocess.TimeoutExpired:
            out.update(timed_out=True, killed_reason="timeout")
            _kill_session(proc.pid)
            proc.wait()
        _kill_session(proc.pid)   # nothing of the job outlives it
        reaper.kill()
        reaper.wait()
        reader.join(timeout=5)
        out["wall_s"] = time.monotonic() - start
        out["returncode"] = None if out["timed_out"] else proc.returncode
        out["output_tail"] = "".join(chunks)[-_TAIL_CHARS:]
        for rel in files_to_collect(job):
            p = run_dir / _safe_rel(rel)
            if p.is_file():
                out["files"][rel] = p.read_bytes()
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------- on the driver

_START_HINT = ("Start one with `ray start --head --port=6379` on the head machine and `ray start "
               "--address=<head>:6379` on the others, then pass --ray-address <head>:6379 (see docs/ray.md)")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except ValueError:
        raise AutolabError(f"--ray-address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)") from None
    except OSError as e:
        raise AutolabError(f"no Ray cluster answers at {address} ({e.strerror or e}). {_START_HINT}") from None


def _running_cluster(ray) -> str | None:
    """The address of a live cluster started on this machine (``ray start --head``), else None
    (also when Ray's record of the last cluster is stale: ray.init would hang on it)."""
    try:
        import ray._private.services as services

        found = services.canonicalize_bootstrap_address("auto")
    except (ImportError, AttributeError):   # Ray moved its internals: let ray.init look for itself
        return "auto"
    except Exception:        # e.g. ConnectionError: no record of a cluster
        return None
    if not found:
        return None
    try:
        _check_reachable(found, timeout=2.0)
    except AutolabError:
        return None
    return found


class RayExecutor(Executor):
    """``RayExecutor(address=None, num_cpus_per_run=None, max_retries=0, resources=None, ...)``.

    address: the cluster (``"host:6379"``, ``"auto"``, or ``"ray://host:10001"``). With an
        address, only that cluster is used: no local cluster is ever started instead. With
        none, a running cluster is found (``ray start --head`` on this machine, or
        ``RAY_ADDRESS``); if there is none, a local one is started for this process and a
        message says so.
    num_cpus_per_run: CPUs a run reserves (default: the preset's ``threads`` on CPU presets,
        1 on GPU presets).
    max_retries: Ray-level retries of a task whose worker died (default 0: autolab re-queues
        the run itself and the log shows every attempt).
    resources: extra Ray resources every run requests, e.g. ``{"a100": 1}`` to keep runs on
        the nodes started with ``--resources='{"a100": 8}'``.
    unschedulable_grace_s: a queued run that no live node can run any more (its node died) is
        given up as "worker lost" after this long.
    init_kwargs: passed to ``ray.init`` (e.g. ``runtime_env``).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus_per_run: float | None = None, max_retries: int = 0,
                 resources: dict[str, float] | None = None, unschedulable_grace_s: float = 30.0,
                 poll_s: float = 2.0, **init_kwargs):
        self._ray = _import_ray()
        self.address = address
        self.num_cpus_per_run = num_cpus_per_run
        self.max_retries = int(max_retries)
        self.resources = dict(resources or {})
        self.unschedulable_grace_s = unschedulable_grace_s
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._nodes: list[dict] = []
        self._nodes_at = -1e9
        self._refs: dict[str, object] = {}
        self._waiters: set[threading.Thread] = set()
        self._task_refs: dict[str, object] = {}
        self._closed = False
        self._busy_s = 0.0
        self._owns_connection = self._connect(address, init_kwargs)
        self._remote = self._ray.remote(_run_job)

    # -- connection
    def _connect(self, address: str | None, init_kwargs: dict) -> bool:
        ray = self._ray
        address = address or os.environ.get("RAY_ADDRESS") or None   # an address given in the environment is given too
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if address and address not in ("auto", current) and not address.startswith("ray://") \
                    and address.rsplit(":", 1)[-1] != current.rsplit(":", 1)[-1]:
                raise AutolabError(f"this process is already connected to the Ray cluster at {current}, not {address}; "
                                   "call ray.shutdown() first or use that address")
            return False
        if address and address != "auto" and "://" not in address:
            _check_reachable(address)   # ray.init would retry a wrong address for minutes
        target = address if address and address != "auto" else _running_cluster(ray)
        if address == "auto" and not target:
            raise AutolabError(f"no running Ray cluster found on this machine (address 'auto'). {_START_HINT}")
        kwargs = {"log_to_driver": False, "configure_logging": False, **init_kwargs}
        old = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        try:
            try:
                if target:
                    ray.init(address=target, **kwargs)
            except ConnectionError as e:
                if address or target != "auto":
                    raise AutolabError(f"no Ray cluster answers at {target} ({e}). {_START_HINT}") from None
                target = None
            if not target:
                print("autolab: no running Ray cluster found (no `ray start --head` on this machine, no RAY_ADDRESS); "
                      "starting a local one for this process. Pass --ray-address to use a cluster.", file=sys.stderr)
                ray.init(address="local", include_dashboard=False, **kwargs)
        finally:
            if old is not None:   # ray.init installs a SIGTERM handler; a library must not
                signal.signal(signal.SIGTERM, old)
        return True

    @property
    def busy_s(self) -> float:
        """Seconds runs spent executing on workers (the loop's idle-time measure)."""
        return self._busy_s

    # -- capacity
    def _alive_nodes(self) -> list[dict]:
        """Total resources of each live node (cached for a second: every waiting run asks)."""
        with self._lock:
            if time.monotonic() - self._nodes_at > 1.0:
                self._nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
                self._nodes_at = time.monotonic()
            return list(self._nodes)

    @property
    def slots(self) -> int:
        """Runs in flight at once: the cluster's GPUs (one run each) when it has GPUs, else its
        CPUs // ``num_cpus_per_run`` (default 1). See ``slots_for`` for a given preset."""
        res = self._ray.cluster_resources()
        if int(res.get("GPU", 0)):
            return int(res["GPU"])
        return max(1, int(res.get("CPU", 1) // (self.num_cpus_per_run or 1)))

    def slots_for(self, gpus: int, cpu_threads: int = 1, runs_per_gpu: int = 1) -> int:
        res = self._ray.cluster_resources()
        if gpus:
            share = max(1, int(runs_per_gpu)) if gpus == 1 else 1   # Ray shares a GPU only between 1-GPU tasks
            return max(1, int(res.get("GPU", 0) // gpus) * share)
        return max(1, int(res.get("CPU", 1) // (self.num_cpus_per_run or cpu_threads or 1)))

    def _request(self, job: Job) -> dict[str, float]:
        """What one run of ``job`` reserves (CPU capped at the largest node, as the local
        executor caps threads at the machine's cores)."""
        need: dict[str, float] = dict(self.resources)
        lim = job.limits
        cpus = self.num_cpus_per_run if self.num_cpus_per_run is not None else (1 if lim.gpus else max(1, lim.cpu_threads))
        biggest = max((n.get("CPU", 0) for n in self._alive_nodes()), default=0)
        if biggest and cpus > biggest:
            cpus = biggest
        need["CPU"] = cpus
        if lim.gpus:
            # a 1-GPU run of a preset with runs_per_gpu = k takes 1/k of the GPU (Ray's fractional GPUs);
            # the runs that share it take turns for their timed work (the harness's GPU baton)
            need["GPU"] = 1.0 / max(1, lim.runs_per_gpu) if lim.gpus == 1 else lim.gpus
        return need

    def _unschedulable(self, need: dict[str, float]) -> str:
        """'' if some live node can run this request, else a sentence saying what is missing."""
        nodes = self._alive_nodes()
        if any(all(n.get(k, 0) >= v for k, v in need.items() if v) for n in nodes):
            return ""
        want = ", ".join(f"{k}={v:g}" for k, v in need.items() if v)
        return f"no live node of the Ray cluster has {want} ({len(nodes)} node(s) alive)"

    def _task_ref(self, task_dir: str):
        """The task folder's files as one object in the cluster (put once; fetched only by
        workers on which the folder's path does not exist)."""
        if task_dir not in self._task_refs:
            files: dict[str, bytes] = {}
            root = Path(task_dir)
            total = 0
            for p in sorted(root.rglob("*")):
                rel = p.relative_to(root)
                if any(part in _SKIP_DIRS for part in rel.parts) or not p.is_file():
                    continue
                size = p.stat().st_size
                if size <= _MAX_SHIPPED_FILE:
                    files[rel.as_posix()] = p.read_bytes()
                    total += size
                if total > _MAX_SHIPPED_TOTAL:
                    files = {}
                    break
            self._task_refs[task_dir] = self._ray.put(files) if files else None
        return self._task_refs[task_dir]

    # -- running jobs
    def submit(self, job: Job) -> "Future[JobResult]":
        fut: Future[JobResult] = Future()
        try:
            if self._closed:
                raise AutolabError("the ray executor is shut down")
            need = self._request(job)
            why = self._unschedulable(need)
            if why:   # not retryable: the loop would only hit the same wall again
                fut.set_result(JobResult(job.run_id, None, 0.0, killed_reason="unschedulable",
                                         output_tail=f"{why}; add such a node (ray start --address=... "
                                                     "--num-gpus/--num-cpus) or choose another preset",
                                         host=socket.gethostname()))
                return fut
            cpus = need["CPU"]
            box = [ref for ref in [self._task_ref(job.cwd)] if ref is not None]
            opts = {"num_cpus": need.pop("CPU"), "num_gpus": need.pop("GPU", 0), "max_retries": self.max_retries,
                    "retry_exceptions": False, "name": f"autolab:{job.run_id}"}
            if need:
                opts["resources"] = need
            ref = self._remote.options(**opts).remote(job, cpus, box)
        except BaseException as e:  # never leave a future unresolved
            fut.set_result(JobResult(job.run_id, None, 0.0, killed_reason=f"executor error: {e}",
                                     output_tail=repr(e), host=socket.gethostname()))
            return fut
        t = threading.Thread(target=self._wait, args=(job, ref, self._request_of(opts), fut),
                             name=f"autolab-ray-{job.run_id}", daemon=True)
        with self._lock:
            self._refs[job.run_id] = ref
            self._waiters.add(t)
        t.start()
        return fut

    @staticmethod
    def _request_of(opts: dict) -> dict[str, float]:
        need = dict(opts.get("resources", {}))
        need["CPU"] = opts["num_cpus"]
        if opts["num_gpus"]:
            need["GPU"] = opts["num_gpus"]
        return need

    def _wait(self, job: Job, ref, need: dict, fut: Future) -> None:
        ray = self._ray
        t0 = time.monotonic()
        res: JobResult | None = None
        try:
            stuck_since = None
            while True:
                ready, _ = ray.wait([ref], timeout=self.poll_s)
                if ready:
                    break
                if self._closed:
                    break   # shutdown() cancelled it: ray.get raises TaskCancelledError
                why = self._unschedulable(need)
                if not why:
                    stuck_since = None
                    continue
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since >= self.unschedulable_grace_s:
                    ray.cancel(ref, force=True)
                    res = JobResult(job.run_id, None, time.monotonic() - t0, killed_reason=LOST,
                                    output_tail=f"the run could not be placed any more: {why} (a node died?)",
                                    host=socket.gethostname())
                    return
            out = ray.get(ref)
            res = JobResult(job.run_id, **out)
        except BaseException as e:
            res = self._failure(job, e, time.monotonic() - t0)
        finally:
            if res is None:
                res = JobResult(job.run_id, None, time.monotonic() - t0, killed_reason="executor error: no result",
                                host=socket.gethostname())
            with self._lock:
                self._refs.pop(job.run_id, None)
                self._waiters.discard(threading.current_thread())
                self._busy_s += res.wall_s
            fut.set_result(res)

    def _failure(self, job: Job, e: BaseException, wall: float) -> JobResult:
        ex = self._ray.exceptions
        lost = tuple(getattr(ex, n) for n in ("NodeDiedError", "WorkerCrashedError", "ObjectLostError",
                                              "LocalRayletDiedError", "RaySystemError", "ActorDiedError")
                     if hasattr(ex, n))
        if isinstance(e, lost):
            reason = LOST
        elif isinstance(e, ex.TaskCancelledError):
            reason = "interrupted"   # the executor was shut down under it: re-queued on the next loop
        elif hasattr(ex, "OutOfMemoryError") and isinstance(e, ex.OutOfMemoryError):
            reason = "out of memory (killed by Ray's memory monitor)"
        else:
            reason = f"executor error: {type(e).__name__}"
        return JobResult(job.run_id, None, wall, killed_reason=reason, output_tail=str(e)[-_TAIL_CHARS:],
                         host=socket.gethostname())

    def shutdown(self, wait: bool = True) -> None:
        """Cancel the runs still in flight (their processes are killed on the workers) and,
        if this executor made the connection, disconnect from the cluster."""
        self._closed = True
        with self._lock:
            refs, waiters = list(self._refs.values()), list(self._waiters)
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass
        if wait:
            for t in waiters:
                t.join(timeout=30)
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_connection = False


__all__ = ["RayExecutor", "INSTALL_HINT"]
