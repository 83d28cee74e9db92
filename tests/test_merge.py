from autolab.merge import common_ancestor, merge_candidates, merged_pairs
from autolab.records import State

SOL = '"""Toy solution: the loop should move X towards 3."""\n' + "X = {x}          # the parameter being tuned\nSTEP = {step}         # an integer setting\nUSE_TRICK = False  # a switch that does nothing\n"


def test_clean_merge_of_two_threads(toy_lab):
    seed = toy_lab.seed_candidate()
    a = toy_lab.add_candidate({"solution.py": SOL.format(x=2.0, step=2)}, seed, thread="t0")
    b = toy_lab.add_candidate({"solution.py": SOL.format(x=1.0, step=5)}, seed, thread="t1")
    assert common_ancestor(toy_lab, a, b).id == seed.id
    m = merge_candidates(toy_lab, a, b)
    assert m is not None and m.meta["merge_of"] == [a.id, b.id]
    text = toy_lab.files(m)["solution.py"]
    assert "X = 2.0" in text and "STEP = 5" in text
    assert frozenset((a.id, b.id)) in merged_pairs(toy_lab)
    idea = toy_lab.log.get("idea", m.idea_id)
    assert idea.source == "merge" and idea.state is State.READY


def test_conflict_without_llm_is_skipped_and_recorded(toy_lab):
    seed = toy_lab.seed_candidate()
    a = toy_lab.add_candidate({"solution.py": SOL.format(x=2.0, step=2)}, seed, thread="t0")
    b = toy_lab.add_candidate({"solution.py": SOL.format(x=2.5, step=2)}, seed, thread="t1")
    assert merge_candidates(toy_lab, a, b) is None
    ev = toy_lab.log.events("merge_skipped")
    assert ev and "no LLM configured" in ev[-1]["reason"]
    assert frozenset((a.id, b.id)) in merged_pairs(toy_lab)


def test_conflict_resolved_by_llm(toy_lab):
    from autolab.llm import LLM, LLMConfig

    seed = toy_lab.seed_candidate()
    a = toy_lab.add_candidate({"solution.py": SOL.format(x=2.0, step=2)}, seed, thread="t0")
    b = toy_lab.add_candidate({"solution.py": SOL.format(x=2.5, step=2)}, seed, thread="t1")
    llm = LLM(LLMConfig("openai/mock"), toy_lab.log, mock_response="```python\n" + SOL.format(x=2.25, step=2) + "```")
    m = merge_candidates(toy_lab, a, b, llm=llm)
    assert m is not None and "X = 2.25" in toy_lab.files(m)["solution.py"]
    assert m.meta["resolved_by_llm"] == ["solution.py"]
    assert len(toy_lab.log.llm_calls()) == 1
