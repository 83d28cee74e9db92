import math

import pytest

import autolab
from autolab._audit.stats import compare
from autolab.records import Candidate, Run, State


def test_welch_one_sided_direction():
    better = compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], direction="minimize")
    assert better.p_value < 0.001 and better.effect == pytest.approx(1.0)
    worse = compare([2.0, 2.1, 1.9], [1.0, 1.1, 0.9], direction="minimize")
    assert worse.p_value > 0.99 and worse.effect < 0
    up = compare([2.0, 2.1, 1.9], [1.0, 1.1, 0.9], direction="maximize")
    assert up.p_value < 0.001
    assert compare([1.0], [2.0, 2.1], direction="minimize").p_value is None


def test_one_sample_below_target():
    r = compare([3.27, 3.275, 3.272, 3.274], [], direction="minimize", test="one_sample_below_target", target=3.28)
    assert r.p_value < 0.01
    r = compare([3.279, 3.283, 3.277], [], direction="minimize", test="one_sample_below_target", target=3.28)
    assert r.p_value > 0.01


def _runs(lab, cand, values, purpose="confirm", **meta):
    for i, v in enumerate(values):
        r = Run(id=f"r-{cand.id}-{purpose}-{i}", task=lab.task.name, candidate_id=cand.id, preset=lab.preset_name,
                seed=101 + i, purpose=purpose, meta={"protected_changed": [], "violations": [], "probes": {}, **meta})
        lab.log.append(r.with_state(State.COMPLETE, metrics={"loss": v, "hidden_loss": v},
                                    timings={"train_s": 1.0, "budget_s": 5.0, "allowance_s": 1.0}))


def _child(lab, x):
    seed = lab.seed_candidate()
    return lab.add_candidate({"solution.py": f"X = {x}\nSTEP = 2\nUSE_TRICK = False\n"}, seed)


def test_promotion_needs_significance_and_seeds(toy_lab):
    seed = toy_lab.seed_candidate()
    _runs(toy_lab, seed, [4.0, 4.05, 3.95])
    c = _child(toy_lab, 2.0)
    _runs(toy_lab, c, [3.9])
    v = autolab.audit(toy_lab, c)
    assert v.state is State.PENDING and "needs 2" in v.reason          # one seed never promotes
    _runs(toy_lab, c, [3.9, 4.1, 4.0], purpose="confirm")
    v = autolab.audit(toy_lab, c)
    assert v.state is State.REJECTED and "not significant" in v.reason  # noise, not gain
    c2 = _child(toy_lab, 2.5)
    _runs(toy_lab, c2, [1.0, 1.05, 0.95])
    v = autolab.audit(toy_lab, c2)
    assert v.state is State.PROMOTED and v.p_value < 0.05
    assert toy_lab.candidate(c2.id).state is State.PROMOTED
    assert toy_lab.log.insights_list() and toy_lab.log.insights_list()[-1].effect == pytest.approx(3.0)


def test_screening_selection_runs_do_not_count_for_promotion(toy_lab):
    seed = toy_lab.seed_candidate()
    _runs(toy_lab, seed, [4.0, 4.05, 3.95])
    c = _child(toy_lab, 2.2)
    _runs(toy_lab, c, [1.0, 1.01, 0.99], purpose="screen")
    v = autolab.audit(toy_lab, c)
    assert v.state is State.PENDING and v.n_candidate == 0


def test_failed_checks_reject_even_with_a_big_gain(toy_lab):
    seed = toy_lab.seed_candidate()
    _runs(toy_lab, seed, [4.0, 4.05, 3.95])
    c = _child(toy_lab, 2.7)
    _runs(toy_lab, c, [1.0, 1.05, 0.95], violations=[{"kind": "network", "detail": "connect 1.2.3.4:80"}])
    v = autolab.audit(toy_lab, c)
    assert v.state is State.REJECTED and "sandbox" in v.reason


def test_budget_and_forged_summary_checks(toy_lab):
    from autolab._audit import run_checks

    c = _child(toy_lab, 2.9)
    r = Run(id="r-x", task="toy", candidate_id=c.id, preset=toy_lab.preset_name, seed=101, purpose="confirm",
            meta={"summary": {"loss": 0.001}})
    toy_lab.log.append(r.with_state(State.COMPLETE, metrics={"loss": 1.0},
                                    timings={"train_s": 30.0, "budget_s": 5.0, "allowance_s": 1.0, "script_train_s": 2.0}))
    checks = {ch.name: ch for ch in run_checks(toy_lab, c)}
    assert not checks["budget"].passed and "30.0 s" in checks["budget"].detail
    assert not checks["forged_summary"].passed


def test_static_scan_flags_env_reads(toy_lab):
    from autolab._audit import run_checks

    seed = toy_lab.seed_candidate()
    c = toy_lab.add_candidate({"solution.py": "import os\nKEY = os.environ.get('OPENAI_API_KEY')\nX = 3.0\n"}, seed)
    checks = {ch.name: ch for ch in run_checks(toy_lab, c)}
    assert not checks["static_scan"].passed and "environment" in checks["static_scan"].detail


def _sr_runs(lab, cand, losses, times, failed=()):
    for i, (l, t) in enumerate(zip(losses, times)):
        r = Run(id=f"r-{cand.id}-{i}", task="speedrun", candidate_id=cand.id, preset=lab.preset_name, seed=101 + i,
                purpose="confirm", meta={"protected_changed": [], "violations": [], "probes": {}})
        if i in failed:
            lab.log.append(r.with_state(State.FAILED, metrics={"val_loss": l},
                                        error={"reason": "target not reached: 5.1 > 4.95", "ename": "RunFailed"}))
        else:
            lab.log.append(r.with_state(State.COMPLETE, metrics={"val_loss": l, "time_s": t},
                                        timings={"train_s": t, "budget_s": 60.0, "allowance_s": 30.0}))


def test_speedrun_record_rule(tmp_path):
    from autolab._audit import _record_rule

    lab = autolab.Lab(tmp_path / "sr", task="speedrun", preset="cpu-tiny")
    seed = lab.seed_candidate()
    _sr_runs(lab, seed, [4.88, 4.89, 4.87], [30.0, 30.5, 29.8])
    target = lab.task.preset("cpu-tiny").settings.get("target", lab.task.significance.target)
    text = lab.files(seed)["train_gpt.py"]
    fast = lab.add_candidate({"train_gpt.py": text + "\n# faster\n"}, seed)
    _sr_runs(lab, fast, [4.90, 4.91, 4.89], [25.0, 25.3, 24.9])
    state, reason, _ = _record_rule(lab, fast, seed, "cpu-tiny", True)
    assert state is State.PROMOTED, reason
    # a run that missed the target counts with its loss: the mean is no longer clearly below
    miss = lab.add_candidate({"train_gpt.py": text + "\n# risky\n"}, seed)
    _sr_runs(lab, miss, [4.90, 5.10, 4.91], [20.0, 20.0, 20.0], failed={1})
    state, reason, _ = _record_rule(lab, miss, seed, "cpu-tiny", True)
    assert state is State.REJECTED and "not below target" in reason, reason
    # below target but not faster than the parent
    slow = lab.add_candidate({"train_gpt.py": text + "\n# slow\n"}, seed)
    _sr_runs(lab, slow, [4.80, 4.81, 4.79], [31.0, 30.9, 31.2])
    state, reason, _ = _record_rule(lab, slow, seed, "cpu-tiny", True)
    assert state is State.REJECTED and "does not beat the parent" in reason
    assert target is not None


# ---------------------------------------------------------------------------- plausibility bound

PLAUSIBLE = "\n[audit.plausibility]\nfloor = 0.5\n"
ONLY_X3 = """
[[edit]]
name = "x_to_3"
title = "Scale X to 3"
hypothesis = "the optimum is at 3"
setting = "X"
op = "scale"
values = [3.0]
direction = "optimizer"
"""


def _bounded(toy_task, tmp_path, extra=PLAUSIBLE, name="lab"):
    toml = toy_task / "task.toml"
    toml.write_text(toml.read_text() + extra)
    return autolab.Lab(tmp_path / name, task=str(toy_task))


def test_plausibility_check_on_real_runs(tmp_path, toy_task):
    """A real run whose loss lies below the task's floor fails the plausibility check (reject),
    with the figure and the bound; a run above the floor passes it."""
    from autolab._audit import run_checks

    lab = _bounded(toy_task, tmp_path)
    too_good, fine = _child(lab, 3.0), _child(lab, 2.0)     # loss ~ 0 +- 0.05 (below 0.5) and ~ 1.0
    (r,) = autolab.run(lab, too_good, seeds=1, progress=False)
    (r2,) = autolab.run(lab, fine, seeds=1, progress=False)
    assert r.state is State.COMPLETE and r.metrics["loss"] < 0.5 and r2.metrics["loss"] > 0.5
    chk = {c.name: c for c in run_checks(lab, too_good)}["plausibility"]
    assert not chk.passed and chk.severity == "reject"
    assert f"loss {r.metrics['loss']:.6g} is below the floor 0.5 of preset quick" in chk.detail
    assert str(toy_task / "task.toml") in chk.detail
    chk = {c.name: c for c in run_checks(lab, fine)}["plausibility"]
    assert chk.passed and "quick floor 0.5" in chk.detail


def test_the_loop_never_promotes_a_result_past_the_bound(tmp_path, toy_task):
    """The only idea the playbook has (X = 3, the true optimum: a real, large gain) lands past the
    floor: the loop's screening audit rejects it on plausibility alone, and nothing is promoted."""
    (toy_task / "playbook.toml").write_text(ONLY_X3)
    lab = _bounded(toy_task, tmp_path)
    s = autolab.loop(lab, iterations=1, proposer_seed=0, progress=False)
    assert s.experiments == 1 and s.promoted == 0
    (cand,) = [c for c in lab.log.candidates_list() if c.parent_id]
    assert cand.state is State.REJECTED
    (v,) = [v for v in lab.log.verdicts_list() if v.candidate_id == cand.id]
    failed = [c["name"] for c in v.checks if not c["passed"] and c["severity"] == "reject"]
    assert failed == ["plausibility"] and v.reason == "audit failed: plausibility"
    detail = next(c["detail"] for c in v.checks if c["name"] == "plausibility")
    assert "below the floor 0.5" in detail and "inspect the runs" in detail


def test_a_ceiling_bounds_a_maximized_metric(tmp_path, toy_task):
    from autolab._audit import run_checks

    toml = toy_task / "task.toml"
    toml.write_text(toml.read_text().replace('direction = "minimize"', 'direction = "maximize"'))
    lab = _bounded(toy_task, tmp_path, "\n[audit.plausibility]\nceiling = 2.0\npresets = { quick = 3.0 }\n")
    c = _child(lab, 2.0)
    _runs(lab, c, [2.5, 3.5], purpose="screen")
    chk = {c.name: c for c in run_checks(lab, c)}["plausibility"]
    assert not chk.passed and "loss 3.5 is above the ceiling 3 of preset quick" in chk.detail and "2.5" not in chk.detail


# ---------------------------------------------------------------------------- paired test and the sequential rule

def test_paired_t_matches_scipy_in_both_directions():
    from scipy import stats

    from autolab._audit.stats import gains, paired

    cand, par = [0.931, 0.946, 0.9365, 0.9402], [0.9352, 0.9485, 0.9443, 0.9402]
    r = paired(cand, par, direction="minimize")
    ref = stats.ttest_rel(cand, par, alternative="less")
    assert r.test == "paired_t" and r.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert r.statistic == pytest.approx(-ref.statistic, rel=1e-12)       # positive statistic = better
    d = gains(cand, par, "minimize")
    assert r.effect == pytest.approx(sum(d) / 4) and r.effect > 0
    half = stats.t.ppf(0.975, 3) * stats.tstd(d) / 2
    assert (r.ci_low, r.ci_high) == (pytest.approx(r.effect - half), pytest.approx(r.effect + half))
    up = paired(par, cand, direction="maximize")                          # the same data, the other way round
    assert up.p_value == pytest.approx(stats.ttest_rel(par, cand, alternative="greater").pvalue, rel=1e-12)
    assert paired(cand, par, direction="maximize").p_value == pytest.approx(1 - r.p_value)
    # one pair cannot be tested; identical gains are decisive; a worse candidate never passes
    assert paired([1.0], [2.0], direction="minimize").p_value is None
    assert paired([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], direction="minimize").p_value == 0.0
    assert paired([2.0, 3.0, 4.0], [1.5, 2.5, 3.5], direction="minimize").p_value == 1.0
    with pytest.raises(ValueError, match="aligned"):
        paired([1.0, 2.0], [1.0], direction="minimize")


def test_sequential_rule_boundaries_and_looks():
    from autolab._audit.stats import SEQ_BETA, sequential_look, sprt_llr

    lower = math.log(SEQ_BETA / 0.95)
    # Wald's log-likelihood ratio for N(delta, s) against N(0, s): (delta / s^2) (sum d - n delta / 2)
    assert sprt_llr([0.002, -0.001, 0.0015], 0.001, 0.001) == pytest.approx(1000 * (0.0025 - 0.0015))
    clear_loser = sequential_look([-0.003], sigma=0.001, alpha=0.05, cap=3)
    assert clear_loser.decision == "futile" and clear_loser.n == 1 and clear_loser.llr <= lower == clear_loser.lower
    close = sequential_look([0.0004], sigma=0.001, alpha=0.05, cap=3)
    assert close.decision == "continue" and lower < close.llr
    assert sequential_look([0.0004, 0.0011, 0.0009], sigma=0.001, alpha=0.05, cap=3).decision == "cap"
    assert sequential_look([-0.0004, -0.0011], sigma=0.001, alpha=0.05, cap=3).decision == "futile"
    # no noise estimate yet: no futility stop, the cap decides
    assert sequential_look([-5.0], sigma=None, alpha=0.05, cap=3).decision == "continue"
    # noiseless pairs: the sign decides at once
    assert sequential_look([0.0], sigma=0.0, alpha=0.05, cap=3).decision == "futile"
    assert sequential_look([0.1], sigma=0.0, alpha=0.05, cap=3).decision == "continue"


def _whole_rule(d, sigma, alpha, cap):
    """The audit's paired rule on a stream of gains: (promoted, seeds used)."""
    from autolab._audit.stats import paired, sequential_look

    for n in range(1, cap + 1):
        look = sequential_look(d[:n], sigma=sigma, alpha=alpha, cap=cap)
        if look.decision == "futile":
            return False, n
        if look.decision == "cap":
            t = paired([-x for x in d[:n]], [0.0] * n, direction="minimize")
            return bool(t.p_value is not None and t.p_value < alpha and t.effect > 0), n
    raise AssertionError("the rule must decide by the cap")


def test_sequential_rule_keeps_its_stated_error_rates():
    """Simulated paired gains (a fixed random stream): with no true gain, promotions stay under
    alpha; with a true gain of delta (one paired sd) the futility stop loses at most
    beta / (1 - alpha) of them; a true loss of two paired sds mostly stops after one seed."""
    import random

    from autolab._audit.stats import SEQ_BETA

    rng, sigma, alpha, cap, n_sim = random.Random(7), 0.001, 0.05, 3, 1500
    null = [_whole_rule([rng.gauss(0, sigma) for _ in range(cap)], sigma, alpha, cap) for _ in range(n_sim)]
    gain = [_whole_rule([rng.gauss(sigma, sigma) for _ in range(cap)], sigma, alpha, cap) for _ in range(n_sim)]
    false_promotions = sum(p for p, _ in null) / n_sim
    futile_with_gain = sum(n < cap and not p for p, n in gain) / n_sim
    assert false_promotions < alpha + 0.01
    assert futile_with_gain < SEQ_BETA / (1 - alpha) + 0.01
    loss = [_whole_rule([rng.gauss(-2 * sigma, sigma) for _ in range(cap)], sigma, alpha, cap) for _ in range(n_sim)]
    assert not any(p for p, _ in loss)
    assert sum(n == 1 for _, n in loss) / n_sim > 0.75         # clear losers stop after one paired seed
    assert sum(n for _, n in null) / n_sim < cap - 0.2         # null ideas stop early too, less often


def test_an_old_unpaired_lab_still_decides(toy_lab):
    """Runs recorded before pairing (the candidate screened on seed 1, the parent only on its
    confirmation seeds): screening falls back to the parent's mean over other seeds."""
    seed = toy_lab.seed_candidate()
    _runs(toy_lab, seed, [4.0, 4.05, 3.95])
    c = _child(toy_lab, 2.0)
    r = Run(id="r-old-screen", task="toy", candidate_id=c.id, preset=toy_lab.preset_name, seed=1, purpose="screen",
            meta={"protected_changed": [], "violations": [], "probes": {}})
    toy_lab.log.append(r.with_state(State.COMPLETE, metrics={"loss": 1.0, "hidden_loss": 1.0},
                                    timings={"train_s": 1.0, "budget_s": 5.0, "allowance_s": 1.0}))
    v = autolab.audit(toy_lab, c, stage="screen", screen_margin=0.05, final=True)
    assert v.state is State.PENDING and v.meta["design"] == "unpaired" and "mean over other seeds" in v.reason
    # unpaired: the margin is at least the cross-seed spread (no paired or repeat figure exists here)
    assert v.meta["noise"]["screen_source"] is None
    assert v.meta["screen_margin"] == pytest.approx(max(0.05, v.meta["noise"]["cross_seed_sd"]))
    _runs(toy_lab, c, [1.0, 1.05, 0.96])
    v = autolab.audit(toy_lab, c, final=True)
    assert v.state is State.PROMOTED and v.meta["design"] == "paired" and v.meta["test"] == "paired_t"
    assert v.meta["paired_seeds"] == [101, 102, 103] and v.meta["sequential"]["decision"] == "cap"


def test_confirmation_stops_a_clear_loser_after_one_paired_seed(toy_lab):
    seed = toy_lab.seed_candidate()
    _runs(toy_lab, seed, [4.0, 4.05, 3.95])
    c = _child(toy_lab, 1.5)
    _runs(toy_lab, c, [4.6])
    v = autolab.audit(toy_lab, c)
    assert v.state is State.REJECTED and "futility after 1 paired seed" in v.reason, v.reason
    assert v.meta["sequential"]["n"] == 1 and v.meta["noise"]["diff_source"] == "cross_seed"
    assert toy_lab.candidate(c.id).state is State.REJECTED
