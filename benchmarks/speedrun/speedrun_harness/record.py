"""The record rule (modded-nanogpt's): a result counts when the mean final validation loss over
n runs is below the target with p < alpha (one-sided one-sample t-test, alpha = 0.01); the time
reported is the mean over those same runs.

Every run that ended with a final validation counts, also one whose own loss missed the
target (status "failed", reason "target not reached: ..."): leaving those out would bias the
mean downwards. Runs that crashed, were killed or failed a probe count for nothing (the audit
rejects the candidate for those on its own).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def one_sample_below(values: Sequence[float], target: float) -> tuple[float | None, float | None]:
    """(t statistic, one-sided p) for H1: mean(values) < target; (None, None) below 2 values."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n < 2:
        return None, None
    mean = sum(xs) / n
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    if var == 0:                     # identical values: the sign decides
        return (-math.inf, 0.0) if mean < target else (math.inf, 1.0)
    from scipy import stats

    t = (mean - target) / math.sqrt(var / n)
    return t, float(stats.t.cdf(t, n - 1))


def counted(result: dict[str, Any]) -> bool:
    """Does this result JSON count for the record rule (a final validation, honest probes)?"""
    m = result.get("metrics") or {}
    if not isinstance(m.get("val_loss"), (int, float)) or not math.isfinite(m["val_loss"]):
        return False
    if result.get("status") == "ok":
        return True
    return result.get("status") == "failed" and str(result.get("reason", "")).startswith("target not reached")


def record_rule(results: Iterable[dict[str, Any]], target: float | None = None, alpha: float = 0.01) -> dict[str, Any]:
    """Apply the rule to result JSONs of one candidate on one preset (several seeds).

    Returns {"n", "target", "alpha", "val_losses", "mean_val_loss", "sd_val_loss", "t", "p_value",
    "record", "times_s", "mean_time_s", "sd_time_s", "failed_probes", "reason"}."""
    rs = list(results)
    target = float(target if target is not None else rs[0]["target"])
    use = [r for r in rs if counted(r)]
    bad_probes = sorted({f"{k}" for r in use for k, v in (r.get("probes") or {}).items()
                         if isinstance(v, dict) and v.get("passed") is False})
    losses = [float(r["metrics"]["val_loss"]) for r in use]
    times = [float(r["timings"].get("timed_s", math.nan)) for r in use]
    n = len(losses)
    mean = sum(losses) / n if n else math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in losses) / (n - 1)) if n > 1 else math.nan
    t, p = one_sample_below(losses, target)
    tmean = sum(times) / n if n else math.nan
    tsd = math.sqrt(sum((x - tmean) ** 2 for x in times) / (n - 1)) if n > 1 else math.nan
    ok = p is not None and p < alpha and not bad_probes
    if n < 2:
        why = f"needs at least 2 runs with a final validation (has {n})"
    elif bad_probes:
        why = f"probes failed: {', '.join(bad_probes)}"
    elif ok:
        why = f"mean val_loss {mean:.4f} < target {target:g} (p = {p:.2g} < {alpha:g})"
    else:
        why = f"mean val_loss {mean:.4f} not significantly below target {target:g} (p = {p:.2g}, alpha {alpha:g})"
    return {"n": n, "n_results": len(rs), "target": target, "alpha": alpha, "val_losses": losses,
            "mean_val_loss": mean, "sd_val_loss": sd, "t": t, "p_value": p, "record": ok, "times_s": times,
            "mean_time_s": tmean, "sd_time_s": tsd, "failed_probes": bad_probes, "reason": why}
