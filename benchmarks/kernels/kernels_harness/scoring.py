"""SOL-ExecBench scoring as pure functions (no torch, no GPU): unit-tested on the CPU.

T_SOL = max(FLOPs / peak_flops, bytes / peak_bw)        (the roofline bound of a workload)
S     = 1 / (1 + (T_k - T_SOL) / (T_b - T_SOL))          (0.5 at the baseline, 1 at the bound)
problem score = mean S over its workloads if every workload is correct, else 0
suite score   = mean of the problem scores

S > 1 means a time below the bound, which no honest kernel can reach: such a workload is
flagged (``below_sol``), and a flagged problem scores 0.
"""

from __future__ import annotations

import math
from statistics import fmean


def t_sol(flops: float, nbytes: float, peak_flops: float, peak_bw: float) -> float:
    """Speed-of-light time (seconds) of a workload against measured ceilings (FLOP/s, B/s)."""
    if peak_flops <= 0 or peak_bw <= 0:
        raise ValueError("ceilings must be positive")
    return max(flops / peak_flops, nbytes / peak_bw)


def sol_score(t_k: float, t_b: float, t_sol_: float) -> float:
    """S for a kernel time t_k against baseline t_b and bound t_sol_ (all seconds).

    When the baseline itself is at or under the bound (ceilings measured too low), the
    bound carries no information; we then use T_SOL = 0, i.e. S = t_b / (t_b + t_k),
    which is still 0.5 at parity and tends to 1 as the kernel gets faster.
    """
    if not (t_k > 0 and t_b > 0 and t_sol_ >= 0) or any(map(math.isinf, (t_k, t_b))):
        raise ValueError(f"times must be positive and finite: t_k={t_k} t_b={t_b} t_sol={t_sol_}")
    if t_b <= t_sol_:
        return t_b / (t_b + t_k)
    return 1.0 / (1.0 + (t_k - t_sol_) / (t_b - t_sol_))


def workload_score(flops: float, nbytes: float, peak_flops: float, peak_bw: float,
                   t_k: float, t_b: float) -> dict:
    """Everything the report shows for one workload."""
    ts = t_sol(flops, nbytes, peak_flops, peak_bw)
    s = sol_score(t_k, t_b, ts)
    return {
        "t_k": t_k, "t_b": t_b, "t_sol": ts, "S": s,
        "below_sol": t_k < ts < t_b,      # S > 1: impossible for an honest kernel
        "baseline_at_sol": t_b <= ts,
        "bound": "compute" if flops / peak_flops >= nbytes / peak_bw else "memory",
        "speedup_vs_baseline": t_b / t_k,
        "sol_fraction": ts / t_k,
    }


def problem_score(scores: list[float], all_correct: bool, flagged: bool = False) -> float:
    """Mean S over the workloads when every workload is correct and nothing is flagged, else 0."""
    if not all_correct or flagged or not scores:
        return 0.0
    return fmean(scores)


def suite_score(problem_scores: list[float]) -> float:
    return fmean(problem_scores) if problem_scores else 0.0


def score_suite(problems: dict, ceilings: dict, baselines: dict, kernels: dict) -> dict:
    """Combine per-workload numbers into per-problem and suite scores.

    problems:  {name: {"peak": "bf16"|"fp8", "workloads": [{"label", "flops", "bytes"}]}}
    ceilings:  {"peak_flops": {"bf16": F, "fp8": F}, "peak_bw": B}
    baselines: {name: {label: t_b seconds}}
    kernels:   {name: {"correct": bool, "flagged": bool, "times": {label: t_k seconds}}}
    """
    out: dict = {"problems": {}, "score": 0.0, "below_sol": []}
    per_problem = []
    for name, spec in problems.items():
        peak = ceilings["peak_flops"][spec["peak"]]
        k = kernels.get(name, {})
        rows, s_list, below = [], [], False
        correct = bool(k.get("correct"))
        for w in spec["workloads"]:
            lab = w["label"]
            t_k = k.get("times", {}).get(lab)
            t_b = baselines.get(name, {}).get(lab)
            if not correct or t_k is None or t_b is None:
                rows.append({"label": lab, "S": None, "t_k": t_k, "t_b": t_b,
                             "t_sol": t_sol(w["flops"], w["bytes"], peak, ceilings["peak_bw"])})
                correct = correct and t_k is not None and t_b is not None
                continue
            r = workload_score(w["flops"], w["bytes"], peak, ceilings["peak_bw"], t_k, t_b)
            r["label"] = lab
            rows.append(r)
            s_list.append(r["S"])
            if r["below_sol"]:
                below = True
                out["below_sol"].append(f"{name}[{lab}]")
        flagged = below or bool(k.get("flagged"))
        score = problem_score(s_list, correct and len(s_list) == len(spec["workloads"]), flagged)
        out["problems"][name] = {"score": score, "correct": correct, "flagged": flagged,
                                 "below_sol": below, "workloads": rows}
        per_problem.append(score)
    out["score"] = suite_score(per_problem)
    return out
