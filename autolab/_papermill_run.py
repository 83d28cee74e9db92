"""`python -m autolab._papermill_run NOTEBOOK OUTPUT --params JSON [--kernel NAME]`

How autolab executes a benchmark notebook: one papermill execution in its own process, like
`papermill NOTEBOOK OUTPUT -p ...`, with three differences that only cut start-up and tear-down
time (each run pays them, so they are autolab's per-run overhead):

- parameters travel as one JSON object, so their types arrive exactly (no YAML guessing);
- jsonschema's optional IRI format checker is not loaded: importing ``rfc3987_syntax`` compiles a
  grammar (about 1.4 s of the 2 s that importing papermill takes on a small VM), and notebook
  validation never uses that format;
- the kernel keeps no IPython history database, and is shut down at once when the last cell
  has run (the benchmark's own processes have ended by then).

The executed notebook is the same as papermill's CLI would write (parameters cell injected,
outputs, the error cell on failure, exit status 1 on failure).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autolab._papermill_run", description=__doc__.split("\n")[0])
    ap.add_argument("notebook")
    ap.add_argument("output")
    ap.add_argument("--params", default="{}", help="a JSON object of notebook parameters")
    ap.add_argument("--kernel", default="python3")
    a = ap.parse_args(argv)
    try:
        params = json.loads(a.params)
    except ValueError as e:
        ap.error(f"--params is not JSON ({e}); pass an object such as '{{\"seed\": 1}}'")
    if not isinstance(params, dict):
        ap.error("--params must be a JSON object such as '{\"seed\": 1}'")

    sys.modules.setdefault("rfc3987_syntax", None)   # see the module docstring: an import that fails fast
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    try:
        pm.execute_notebook(a.notebook, a.output, parameters=params, kernel_name=a.kernel, progress_bar=False,
                            shutdown_kernel="immediate", extra_arguments=["--HistoryManager.enabled=False"])
    except PapermillExecutionError as e:
        print(f"papermill: the notebook failed in cell {e.exec_count}: {e.ename}: {e.evalue}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
