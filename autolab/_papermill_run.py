"""`python -m autolab._papermill_run NOTEBOOK OUTPUT --params JSON [--kernel NAME]`

How autolab executes a benchmark notebook: one papermill execution in its own process, like
`papermill NOTEBOOK OUTPUT -p ...`, with three differences that only cut start-up and tear-down
time (each run pays them, so they are autolab's per-run overhead):

- parameters travel as one JSON object, so their types arrive exactly (no YAML guessing);
- optional modules that a local execution never uses are not loaded (``_SKIPPED``): importing
  ``rfc3987_syntax`` (jsonschema's IRI format checker) compiles a grammar (about 1.4 s of the 2 s
  that importing papermill takes on a small VM); papermill's S3 and HDFS handlers import
  ``boto3`` and ``pyarrow`` (about 0.3 CPU s each); jsonschema's other optional format checkers
  (``isoduration`` with ``arrow``, colours, URI templates) add 0.1 s. Their users import each
  under ``try/except ImportError``, notebook validation uses none of these formats, and the
  kernel is a process of its own (its imports are untouched);
- the kernel keeps no IPython history database, and is shut down at once when the last cell
  has run (the benchmark's own processes have ended by then);
- on POSIX the kernel talks over ZeroMQ IPC sockets in a private temporary folder instead of
  loopback TCP ports. jupyter_client picks TCP ports by binding port 0 and releasing it, so
  kernels started at the same moment by concurrent runs can draw the same port; the loser dies
  with "Address already in use" and the run fails after a 60 s start-up timeout. Socket files
  in a folder of their own cannot collide. The folder (mode 0700) also holds the kernel's
  connection file, and is named in ``AUTOLAB_PRIVATE_PATHS``, which the kernel inherits: every
  sandboxed child of the benchmark (the candidate) finds it covered by an empty mount, so
  candidate code cannot reach the kernel, which runs unsandboxed.

The executed notebook is the same as papermill's CLI would write (parameters cell injected,
outputs, the error cell on failure, exit status 1 on failure).

With ``--outcome PATH`` it also writes a small JSON file saying how the execution ended, so that
nobody has to parse the notebook to find out::

    {"status": "ok" | "failed", "returncode": 0 | 1,
     "error": null | {"cell", "executed_cell", "execution_count", "ename", "evalue", "traceback"}}

``cell`` is the failing cell's index in the notebook that was given (papermill's injected
parameters cell not counted), ``executed_cell`` papermill's own index of it among the executed
cells (before the two markdown cells papermill adds on failure), ``execution_count`` the
``In [N]`` shown, ``traceback`` the last 8000 characters without terminal colours. A failure
outside any cell (kernel died, notebook unreadable) has ``cell`` null. No outcome file means
the process never got that far (killed, timed out).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import traceback as _traceback

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# optional imports of papermill and jsonschema that executing a local notebook never uses (see above)
_SKIPPED = ("rfc3987_syntax", "boto3", "pyarrow", "isoduration", "rfc3986_validator", "rfc3339_validator", "webcolors",
            "uri_template")
TRACEBACK_CHARS = 8000


def _ipc_kernel_manager(folder: str):
    """A kernel manager class whose kernel listens on IPC socket files ``folder/k-N``."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IpcKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        @default("ip")
        def _ip_default(self) -> str:
            return os.path.join(folder, "k")

        @default("connection_file")
        def _connection_file_default(self) -> str:
            return os.path.join(folder, "kernel.json")

    return IpcKernelManager


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


def _task_cell(notebook: str, params: dict, kernel: str, executed_index: int) -> int | None:
    """The index in the given notebook of papermill's executed cell ``executed_index``: the
    notebook prepared the way ``execute_notebook`` prepares it (papermill's own functions),
    its injected parameters cell not counted."""
    try:
        from papermill.execute import remove_error_markers
        from papermill.iorw import load_notebook_node
        from papermill.parameterize import parameterize_notebook

        nb = load_notebook_node(notebook)
        if params:
            nb = parameterize_notebook(nb, params, kernel_name=kernel)
        nb = remove_error_markers(nb)
    except Exception:  # noqa: BLE001 - papermill moved a function: the error's other fields stand
        return None
    return sum(1 for c in nb.cells[:executed_index] if "injected-parameters" not in c.get("metadata", {}).get("tags", []))


def write_outcome(path: str, returncode: int, error: dict | None) -> None:
    """Write the outcome JSON atomically (a reader never sees half a file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"status": "ok" if returncode == 0 else "failed", "returncode": returncode, "error": error}, fh,
                  default=str)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autolab._papermill_run", description=__doc__.split("\n")[0])
    ap.add_argument("notebook")
    ap.add_argument("output")
    ap.add_argument("--params", default="{}", help="a JSON object of notebook parameters")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--outcome", default=None, help="write how the execution ended to this JSON file")
    a = ap.parse_args(argv)
    try:
        params = json.loads(a.params)
    except ValueError as e:
        ap.error(f"--params is not JSON ({e}); pass an object such as '{{\"seed\": 1}}'")
    if not isinstance(params, dict):
        ap.error("--params must be a JSON object such as '{\"seed\": 1}'")

    for name in _SKIPPED:   # see the module docstring: imports that fail fast
        sys.modules.setdefault(name, None)
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    extra: dict = {}
    folder = None
    if os.name == "posix":
        # short path: a Unix socket path must stay under 108 bytes
        folder = tempfile.mkdtemp(prefix="autolab-k-", dir="/tmp" if os.path.isdir("/tmp") else None)
        extra["kernel_manager_class"] = _ipc_kernel_manager(folder)
        from autolab.sandbox import PRIVATE_PATHS_ENV, private_paths

        os.environ[PRIVATE_PATHS_ENV] = private_paths(folder)
    returncode, error = 0, None
    try:
        pm.execute_notebook(a.notebook, a.output, parameters=params, kernel_name=a.kernel, progress_bar=False,
                            shutdown_kernel="immediate", extra_arguments=["--HistoryManager.enabled=False"], **extra)
    except PapermillExecutionError as e:
        print(f"papermill: the notebook failed in cell {e.exec_count}: {e.ename}: {e.evalue}", file=sys.stderr)
        returncode = 1
        error = {"cell": _task_cell(a.notebook, params, a.kernel, e.cell_index), "executed_cell": e.cell_index,
                 "execution_count": e.exec_count, "ename": e.ename, "evalue": _plain(str(e.evalue)),
                 "traceback": _plain("\n".join(e.traceback or []))[-TRACEBACK_CHARS:]}
    except Exception as e:  # noqa: BLE001 - recorded in the outcome, then reported like an uncaught error
        _traceback.print_exc()
        returncode = 1
        error = {"cell": None, "executed_cell": None, "execution_count": None, "ename": type(e).__name__,
                 "evalue": _plain(str(e)), "traceback": _plain(_traceback.format_exc())[-TRACEBACK_CHARS:]}
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    if a.outcome:
        write_outcome(a.outcome, returncode, error)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
