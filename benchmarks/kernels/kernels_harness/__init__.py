"""Protected harness of the ``kernels`` task (SOL-ExecBench rules; see ../task.md).

Modules: ``problems`` (load the definitions), ``tolerance`` (the output rule), ``scoring``
(T_SOL and S, pure functions), ``ceilings`` and ``baselines`` (measured, cached per
device), ``timing`` (the timer), ``guards`` and ``scan`` (hack detection), ``evaluate``
(one problem, in-process), ``worker`` (the sandboxed candidate process), ``runner`` (what
the notebook calls), ``interp`` (Triton CPU-interpreter fixes), ``sandbox_bridge``.

Candidates never import this package; it imports them.
"""

__all__ = ["run_benchmark", "settings", "table"]


def __getattr__(name):
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
