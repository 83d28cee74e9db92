"""Significance tests used by the promotion rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class TestResult:
    test: str
    p_value: float | None
    statistic: float | None
    effect: float | None          # improvement in the good direction (positive = better)
    ci_low: float | None          # 95% interval of the effect (two-sided)
    ci_high: float | None
    n_a: int
    n_b: int
    reason: str = ""


def _mean(x: Sequence[float]) -> float:
    return sum(x) / len(x)


def compare(candidate: Sequence[float], parent: Sequence[float], *, direction: str, test: str = "welch",
            target: float | None = None) -> TestResult:
    """One-sided test that ``candidate`` is better than ``parent`` (or, for
    ``one_sample_below_target``, that the candidate's mean is below ``target``)."""
    from scipy import stats

    a, b = [float(v) for v in candidate], [float(v) for v in parent]
    if test == "one_sample_below_target":
        if target is None:
            return TestResult(test, None, None, None, None, None, len(a), 0, "no target set in task.toml [significance]")
        if len(a) < 2:
            return TestResult(test, None, None, None, None, None, len(a), 0, "needs at least 2 runs")
        r = stats.ttest_1samp(a, target, alternative="less")
        eff = target - _mean(a)
        half = stats.t.ppf(0.975, len(a) - 1) * stats.sem(a) if len(a) > 1 else math.nan
        return TestResult(test, float(r.pvalue), float(r.statistic), eff, eff - half, eff + half, len(a), 0)
    if len(a) < 2 or len(b) < 2:
        return TestResult(test, None, None, None, None, None, len(a), len(b), "needs at least 2 runs on each side")
    eff = (_mean(b) - _mean(a)) if direction == "minimize" else (_mean(a) - _mean(b))
    alternative = "less" if direction == "minimize" else "greater"
    equal_var = test == "student"
    va, vb = stats.tvar(a), stats.tvar(b)
    if va == 0 and vb == 0:
        p = 0.0 if eff > 0 else 1.0
        return TestResult(test, p, math.inf if eff > 0 else -math.inf, eff, eff, eff, len(a), len(b), "zero variance")
    r = stats.ttest_ind(a, b, equal_var=equal_var, alternative=alternative)
    # interval of the effect (Welch–Satterthwaite degrees of freedom unless student)
    se = math.sqrt(va / len(a) + vb / len(b))
    if equal_var:
        df = len(a) + len(b) - 2
    else:
        num = (va / len(a) + vb / len(b)) ** 2
        den = (va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1)
        df = num / den if den > 0 else len(a) + len(b) - 2
    half = float(stats.t.ppf(0.975, df)) * se
    return TestResult(test, float(r.pvalue), float(r.statistic), eff, eff - half, eff + half, len(a), len(b))
