"""kernels playbook: every edit applies to the live seed and compiles; every patch (a change of
kernel code, op = "patch") names its source and computes the right answer in Triton's CPU
interpreter (with the harness's bf16 fix, kernels_harness.interp) on the problem's tiny and
tiny-hidden workloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolab._implement import apply_setting_edit
from autolab._propose import load_playbook

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "benchmarks" / "kernels"
SEEDS = REPO / "seeds" / "kernels"

CHECK = r'''
import json, sys, importlib.util
import torch
sys.path.insert(0, sys.argv[1])
from kernels_harness.problems import load_problems
from kernels_harness.tolerance import check_output, dtype_name
from kernels_harness import interp
assert interp.patch()     # the harness's fix of the interpreter's bf16 dot and casts
cases = json.loads(open(sys.argv[2]).read())
EXTRA = {"attention_causal": [{"B": 1, "H": 2, "S": 50, "D": 16}], "softmax": [{"M": 3, "N": 100, "dtype": "bf16"}],
         "cross_entropy": [{"N": 3, "V": 100}], "rmsnorm": [{"M": 3, "N": 100, "dtype": "bf16"}],
         "matmul_bf16": [{"M": 40, "N": 33, "K": 50}], "gemv_bf16": [{"M": 24, "K": 200}, {"M": 5, "K": 70}]}
out = {}
for name, (problem, path) in cases.items():
    prob = load_problems([problem])[problem]
    spec = importlib.util.spec_from_file_location("patched_" + name, path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    bad = []
    small = {k: 16 for k in ("BLOCK_SIZE", "BLOCK_M", "BLOCK_N", "BLOCK_K") if hasattr(mod, k)}
    # the seed's tiles and then 16-wide ones, so that rows and sequences span several blocks
    runs = [(w, {}) for h in (False, True) for w in prob.workloads("tiny", hidden=h)]
    runs += [(w, small) for w in prob.workloads("tiny") + EXTRA.get(problem, [])]
    for w, settings in runs:
            for k, v in settings.items():
                setattr(mod, k, v)
            gen = torch.Generator().manual_seed(7)
            inputs = prob.make_inputs(w, gen, "cpu")
            ref = prob.reference(*[x.clone() for x in inputs])
            got = mod.kernel(*inputs)
            refs, gots = (ref if isinstance(ref, (tuple, list)) else [ref]), (got if isinstance(got, (tuple, list)) else [got])
            for i, (r, g) in enumerate(zip(refs, gots)):
                c = check_output(g, r, *prob.tolerance(i, dtype_name(r.dtype)))
                if not c.ok:
                    bad.append(f"{w} {settings}: {c.reason}")
    out[name] = bad
print(json.dumps(out))
'''


def _apply(e, v=None):
    text = (SEEDS / e.file).read_text()
    edit = {"setting": e.setting, "op": e.op, "value": v, "cast": e.cast, "patch": e.patch}
    return text, apply_setting_edit(text, edit, path=e.file)


def test_every_edit_applies_and_compiles_and_every_patch_names_its_source():
    edits = load_playbook(TASK_DIR / "playbook.toml")
    patches = [e for e in edits if e.op == "patch"]
    assert len(patches) >= 6
    for e in edits:
        for v in e.values:
            text, new = _apply(e, v)
            assert new != text, (e.name, v)
            compile(new, e.file, "exec")
    for e in patches:
        assert e.source and e.hypothesis and e.file, e.name
    # the standard moves: online normalizers, exp2, causal scheduling, cache hints, block pointers
    assert {"softmax.py", "cross_entropy.py", "attention_causal.py", "rmsnorm.py", "matmul_bf16.py", "gemv_bf16.py"} <= \
        {e.file for e in patches}


def test_every_patch_is_right_in_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    cases = {}
    for e in load_playbook(TASK_DIR / "playbook.toml"):
        if e.op == "patch":
            path = tmp_path / f"{e.name}.py"
            path.write_text(_apply(e)[1])
            cases[e.name] = (e.file[:-3], str(path))
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TASK_DIR), str(REPO)])}
    p = subprocess.run([sys.executable, "-c", CHECK, str(TASK_DIR), str(tmp_path / "cases.json")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    bad = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(bad) == set(cases) and not any(bad.values()), bad
