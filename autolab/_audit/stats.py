"""Significance tests used by the promotion rule."""

from __future__ import annotations

import math
import statistics
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


def paired(candidate: Sequence[float], parent: Sequence[float], *, direction: str) -> TestResult:
    """One-sided paired t-test that ``candidate`` beats ``parent`` run for run (the two lists are
    aligned: element i of each was run on the same random seed). The effect is the mean per-seed
    gain (positive = better in ``direction``); identical gains (zero spread) give p 0 or 1."""
    from scipy import stats

    a, b = [float(v) for v in candidate], [float(v) for v in parent]
    if len(a) != len(b):
        raise ValueError(f"a paired test needs aligned lists (got {len(a)} and {len(b)} values)")
    n = len(a)
    if n < 2:
        return TestResult("paired_t", None, None, (gains(a, b, direction)[0] if n else None), None, None, n, n,
                          "needs at least 2 paired seeds")
    d = gains(a, b, direction)
    eff = _mean(d)
    sd = statistics.stdev(d)
    if sd <= 1e-12 * max(1.0, abs(eff)):   # identical gains up to rounding
        p = 0.0 if eff > 0 else 1.0
        return TestResult("paired_t", p, math.inf if eff > 0 else (-math.inf if eff < 0 else 0.0), eff, eff, eff, n, n,
                          "zero spread of the per-seed differences")
    r = stats.ttest_1samp(d, 0.0, alternative="greater")
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return TestResult("paired_t", float(r.pvalue), float(r.statistic), eff, eff - half, eff + half, n, n)


def gains(candidate: Sequence[float], parent: Sequence[float], direction: str) -> list[float]:
    """Per-seed gains of the candidate over its parent (positive = better in ``direction``)."""
    sign = 1.0 if direction == "minimize" else -1.0
    return [sign * (float(p) - float(c)) for c, p in zip(candidate, parent)]


# ---------------------------------------------------------------------------- the sequential rule
# Confirmation adds one paired seed at a time. After each look the candidate is
#   - rejected early for futility when Wald's log-likelihood ratio of "the mean per-seed gain is
#     delta" against "it is 0" (Gaussian gains, sd sigma) falls to log(beta / (1 - alpha));
#   - otherwise given another seed, up to the cap; at the cap the fixed-sample paired t-test at
#     alpha decides. Futility stops never promote, so the false-promotion rate stays at most alpha;
#     a true gain of delta is stopped for futility with probability at most beta / (1 - alpha)
#     (the likelihood ratio is a martingale under "no gain": Wald's inequality).
SEQ_BETA = 0.2          # the futility boundary's nominal miss rate for a gain of delta
SEQ_EFFECT_SD = 1.0     # delta, the minimal effect worth confirming, in paired-noise sds


@dataclass(frozen=True)
class Sequential:
    """One look of the sequential rule: ``decision`` is "futile" (stop, reject), "continue"
    (another paired seed) or "cap" (no more seeds: the fixed paired test decides)."""
    decision: str
    n: int
    llr: float | None          # Wald's log-likelihood ratio (None when sigma is unknown)
    lower: float               # the futility boundary log(beta / (1 - alpha))
    sigma: float | None
    delta: float | None
    cap: int

    def to_dict(self) -> dict:
        return {"decision": self.decision, "n": self.n, "llr": self.llr, "lower": self.lower, "sigma": self.sigma,
                "delta": self.delta, "cap": self.cap, "beta": SEQ_BETA, "effect_sd": SEQ_EFFECT_SD}


def sprt_llr(d: Sequence[float], sigma: float, delta: float) -> float:
    """log L(mean=delta) / L(mean=0) for Gaussian gains ``d`` with known sd ``sigma``."""
    s, n = sum(float(x) for x in d), len(d)
    if sigma <= 0:   # noiseless pairs: the sign of the evidence decides outright
        m = s - n * delta / 2
        return math.inf if m > 0 else -math.inf
    return (delta / sigma ** 2) * (s - n * delta / 2)


def sequential_look(d: Sequence[float], *, sigma: float | None, alpha: float, cap: int,
                    beta: float = SEQ_BETA, effect_sd: float = SEQ_EFFECT_SD) -> Sequential:
    """Apply the sequential rule (above) to the per-seed gains ``d`` seen so far."""
    lower = math.log(beta / (1 - alpha))
    n = len(d)
    if sigma is None or n == 0:
        llr = None
        delta = None
    else:
        delta = effect_sd * sigma
        llr = sprt_llr(d, sigma, delta)
    if llr is not None and llr <= lower:
        return Sequential("futile", n, llr, lower, sigma, delta, cap)
    return Sequential("cap" if n >= cap else "continue", n, llr, lower, sigma, delta, cap)
