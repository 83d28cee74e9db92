"""Make a step module callable as its step function.

``autolab.run`` is both the module ``autolab/run.py`` and the public function ``run``;
Python sets the package attribute to the module whenever the module is imported, so the
module itself forwards calls to the function (``autolab.run(lab, cand)`` always works).
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, attr: str) -> None:
    module = sys.modules[module_name]

    class _StepModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, attr)(*args, **kwargs)

    _StepModule.__name__ = f"{attr}_module"
    module.__class__ = _StepModule
