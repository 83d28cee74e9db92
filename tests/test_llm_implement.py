"""autolab.llm_implement: edit-block parsing and application, refusals, compile check, repair round."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from llm_server import SEED_TRAIN, ScriptedServer, completion, make_lab  # noqa: E402

from autolab.errors import BudgetExceeded, CandidateError  # noqa: E402
from autolab.llm import LLM, LLMConfig  # noqa: E402
from autolab.llm_implement import (EditApplyError, EditBlock, EditFormatError, LLMImplementer,  # noqa: E402
                                   apply_edits, check_compiles, parse_edit_blocks)
from autolab.records import Idea, State  # noqa: E402


def block(path, search, replace, path_line=None):
    return f"{path_line or path}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


LR_EDIT = block("train.py", "LEARNING_RATE = 0.01   # step size\n", "LEARNING_RATE = 0.1    # step size\n")


# ---------------------------------------------------------------------------- parse_edit_blocks

def test_parse_plain_backticks_fence_and_path_reuse():
    text = ("I will raise the learning rate.\n\n" + LR_EDIT + "\n`train.py`\n```python\n<<<<<<< SEARCH\nSTEPS = 10\n"
            "=======\nSTEPS = 20\n>>>>>>> REPLACE\n```\n\n```python\n<<<<<<< SEARCH\nWIDTH = 8\n=======\n"
            "WIDTH = 16\n>>>>>>> REPLACE\n```\n**src/model.py**\n<<<<<<< SEARCH\n=======\nX = 1\n>>>>>>> REPLACE\n")
    blocks = parse_edit_blocks(text)
    assert [b.path for b in blocks] == ["train.py", "train.py", "train.py", "src/model.py"]
    assert blocks[0].search == "LEARNING_RATE = 0.01   # step size\n"
    assert blocks[1].replace == "STEPS = 20\n" and blocks[2].search == "WIDTH = 8\n"
    assert blocks[3].search == "" and [b.index for b in blocks] == [1, 2, 3, 4]


def test_parse_path_inside_fence_and_file_prefix():
    text = "```python\ntrain.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n```\n" \
           "File: `other.py`:\n<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n"
    assert [(b.path, b.search, b.replace) for b in parse_edit_blocks(text)] == \
        [("train.py", "a\n", "b\n"), ("other.py", "c\n", "d\n")]


@pytest.mark.parametrize("text, match", [
    ("train.py\n<<<<<<< SEARCH\na\n>>>>>>> REPLACE\n", "before the '======='"),
    ("train.py\n<<<<<<< SEARCH\na\n=======\nb\n", "never closed"),
    ("train.py\n<<<<<<< SEARCH\na\n", "no '======='"),
    ("Here is the change:\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n", "no file path"),
])
def test_parse_errors(text, match):
    with pytest.raises(EditFormatError, match=match):
        parse_edit_blocks(text)


def test_parse_no_blocks_is_empty():
    assert parse_edit_blocks("I have no changes.") == []


# ---------------------------------------------------------------------------- apply_edits

def test_apply_exact():
    out = apply_edits({"train.py": SEED_TRAIN}, parse_edit_blocks(LR_EDIT))
    assert "LEARNING_RATE = 0.1    # step size\n" in out["train.py"] and "0.01" not in out["train.py"]


def test_apply_exact_only_at_line_starts():
    files = {"a.py": "base_lr = 0.01\nlr = 0.01\n"}
    out = apply_edits(files, [EditBlock("a.py", "lr = 0.01\n", "lr = 0.5\n")])
    assert out["a.py"] == "base_lr = 0.01\nlr = 0.5\n"


def test_apply_whitespace_tolerant_reindents_replacement():
    # the model dropped the function's indentation and added trailing spaces
    search = "for step in range(STEPS):   \n    grad = 2 * (w - 1.0)\n"
    replace = "for step in range(STEPS):\n    grad = 2 * (w - 1.0)\n    grad = max(-1.0, min(1.0, grad))\n"
    out = apply_edits({"train.py": SEED_TRAIN}, [EditBlock("train.py", search, replace)])["train.py"]
    assert ("    for step in range(STEPS):\n        grad = 2 * (w - 1.0)\n"
            "        grad = max(-1.0, min(1.0, grad))\n        w -= LEARNING_RATE") in out
    check_compiles({"train.py": out})


def test_apply_tolerates_missing_blank_lines_and_edge_blanks():
    search = "\ndef model(x, w):\n    return [w * v for v in x]\ndef train():\n"   # blank lines dropped
    replace = "\ndef model(x, w):\n    return [2 * w * v for v in x]\n\n\ndef train():\n"
    out = apply_edits({"train.py": SEED_TRAIN}, [EditBlock("train.py", search, replace)])["train.py"]
    assert "    return [2 * w * v for v in x]\n\n\ndef train():\n    w = 0.0" in out
    assert out.count("def model") == 1


def test_apply_ambiguous_and_not_found():
    files = {"a.py": "x = 1\ny = 2\nx = 1\n"}
    with pytest.raises(EditApplyError, match="2 times"):
        apply_edits(files, [EditBlock("a.py", "x = 1\n", "x = 3\n")])
    with pytest.raises(EditApplyError, match="2 places"):
        apply_edits(files, [EditBlock("a.py", "  x = 1  \n", "x = 3\n")])
    with pytest.raises(EditApplyError, match="(?s)not found.*most similar lines.*y = 2"):
        apply_edits(files, [EditBlock("a.py", "y = 22\n", "y = 3\n")])
    with pytest.raises(EditApplyError, match="does not exist"):
        apply_edits(files, [EditBlock("b.py", "x\n", "y\n")])


def test_apply_create_and_append():
    out = apply_edits({"a.py": "x = 1"}, [EditBlock("new.py", "", "Y = 2\n"), EditBlock("a.py", "", "z = 3\n")])
    assert out == {"a.py": "x = 1\nz = 3\n", "new.py": "Y = 2\n"}


def test_apply_is_pure():
    files = {"train.py": SEED_TRAIN}
    apply_edits(files, parse_edit_blocks(LR_EDIT))
    assert files == {"train.py": SEED_TRAIN}


def test_check_compiles():
    check_compiles({"a.py": "x = 1\n", "notes.txt": "def ("})
    with pytest.raises(CandidateError, match="line 2"):
        check_compiles({"a.py": "x = 1\ndef f(:\n"})


# ---------------------------------------------------------------------------- LLMImplementer

def make_idea(lab, seed, title="Raise the learning rate to 0.1"):
    return lab.log.append(Idea(id="i-1", task=lab.task.name, title=title, hypothesis="faster convergence",
                               plan="set LEARNING_RATE = 0.1 in train.py", thread="opt", parent_id=seed.id,
                               source="llm:test"))


def events(lab):
    return lab.log.events("implement")


def test_implement_happy_path(tmp_path):
    lab, seed = make_lab(tmp_path)
    idea = make_idea(lab, seed)
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), lab.log, mock_response="Raising the step size.\n\n" + LR_EDIT)
    cand = LLMImplementer(llm).implement(lab, idea, seed)
    assert cand is not None and cand.parent_id == seed.id and cand.idea_id == idea.id and cand.thread == "opt"
    assert cand.meta["implementer"] == "llm:openai/gpt-4o-mini"
    assert "+LEARNING_RATE = 0.1" in cand.diff and lab.files(cand)["train.py"].count("0.1 ") == 1
    assert lab.log.get("candidate", cand.id) is not None
    now = lab.log.get("idea", idea.id)
    assert now.state is State.READY and now.meta["candidate_id"] == cand.id
    (ev,) = events(lab)
    assert ev["ok"] is True and ev["idea_id"] == idea.id and ev["candidate_id"] == cand.id
    prompt = lab.log.llm_calls()["request"][0]
    assert "faster convergence" in prompt and "LEARNING_RATE = 0.01" in prompt and "SEARCH" in prompt


def test_protected_file_refused_then_repaired(tmp_path):
    lab, seed = make_lab(tmp_path)
    idea = make_idea(lab, seed)
    hack = block("harness/metric.py", "    return loss\n", "    return 0.0\n")
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), lab.log, mock_response=[hack, LR_EDIT])
    cand = LLMImplementer(llm).implement(lab, idea, seed)
    assert cand is not None and set(lab.files(cand)) == {"train.py"}
    ev = events(lab)
    assert [e["ok"] for e in ev] == [False, True] and "protected" in ev[0]["error"]
    calls = lab.log.llm_calls()
    assert calls["purpose"].tolist() == ["implement", "repair"]
    assert "protected" in calls["request"][1]


@pytest.mark.parametrize("path, match", [("benchmark.ipynb", "protected"), ("../escape.py", "outside"),
                                         ("notes.txt", "not an editable"), ("helper.py", "does not exist")])
def test_refused_paths(tmp_path, path, match):
    lab, seed = make_lab(tmp_path)
    with pytest.raises(EditApplyError, match=match):
        LLMImplementer(LLM(LLMConfig("openai/x"))).edit_files(lab, lab.files(seed), block(path, "", "x = 1\n"))


def test_new_file_allowed_when_the_task_says_so(tmp_path):
    lab, seed = make_lab(tmp_path, allow_new_files=True)
    idea = make_idea(lab, seed)
    answer = block("helper.py", "", "def clip(g):\n    return max(-1.0, min(1.0, g))\n") + LR_EDIT
    cand = LLMImplementer(LLM(LLMConfig("openai/gpt-4o-mini"), lab.log, mock_response=answer)).implement(lab, idea, seed)
    assert cand is not None and set(lab.files(cand)) == {"train.py", "helper.py"}


def test_non_compiling_then_repair_through_loopback_server(tmp_path):
    lab, seed = make_lab(tmp_path)
    idea = make_idea(lab, seed)
    broken = block("train.py", "LEARNING_RATE = 0.01   # step size\n", "LEARNING_RATE = (0.1   # step size\n")
    script = [completion(broken, prompt_tokens=300, completion_tokens=40), completion(LR_EDIT)]
    with ScriptedServer(script) as srv:
        llm = LLM(LLMConfig("openai/coder", api_base=srv.url, api_key="sk-test", retry_base_s=0.001), lab.log)
        cand = LLMImplementer(llm).implement(lab, idea, seed)
        repair_msgs = srv.requests[1]["body"]["messages"]
    assert cand is not None and cand.meta["repair_rounds"] == 1
    assert repair_msgs[-2]["content"] == broken and "does not compile" in repair_msgs[-1]["content"]
    assert [e["ok"] for e in events(lab)] == [False, True]
    calls = lab.log.llm_calls()
    assert calls["prompt_tokens"].tolist() == [300, 11] and (calls["latency_s"] > 0).all()


def test_edits_that_do_not_apply_twice_fail_the_idea(tmp_path):
    lab, seed = make_lab(tmp_path)
    idea = make_idea(lab, seed)
    wrong = block("train.py", "LEARNING_RATE = 0.5\n", "LEARNING_RATE = 0.1\n")
    with ScriptedServer([completion(wrong), completion("Sorry, I cannot do that.")]) as srv:
        llm = LLM(LLMConfig("openai/coder", api_base=srv.url, api_key="sk-test"), lab.log)
        assert LLMImplementer(llm).implement(lab, idea, seed) is None
        assert "LEARNING_RATE = 0.01" in srv.requests[1]["body"]["messages"][-1]["content"]   # the hint
    now = lab.log.get("idea", idea.id)
    assert now.state is State.FAILED and "no edit block" in now.meta["error"] and len(now.meta["errors"]) == 2
    assert [e["ok"] for e in events(lab)] == [False, False]
    assert len(lab.log.candidates_list()) == 1   # only the seed


def test_budget_stop_propagates_and_is_recorded(tmp_path):
    lab, seed = make_lab(tmp_path)
    idea = make_idea(lab, seed)
    llm = LLM(LLMConfig("openai/gpt-4o-mini", max_calls=0), lab.log, mock_response=LR_EDIT)
    with pytest.raises(BudgetExceeded):
        LLMImplementer(llm).implement(lab, idea, seed)
    (ev,) = events(lab)
    assert ev["ok"] is False and ev["fatal"] is True and "BudgetExceeded" in ev["error"]
    assert lab.log.get("idea", idea.id).state is State.PROPOSED


def test_exact_match_needs_whole_lines():
    out = apply_edits({"a.py": "x = 10\nx = 1\n"}, [EditBlock("a.py", "x = 1", "x = 2")])
    assert out["a.py"] == "x = 10\nx = 2\n"


def test_propose_then_implement_through_one_server(tmp_path):
    import json

    from autolab.llm_propose import LLMProposer

    lab, seed = make_lab(tmp_path)
    idea_answer = json.dumps({"title": "Raise the learning rate", "hypothesis": "h", "plan": "LEARNING_RATE = 0.1"})
    with ScriptedServer([completion(idea_answer), completion("", prompt_tokens=1), completion(LR_EDIT)]) as srv:
        llm = LLM(LLMConfig("openai/m", api_base=srv.url, api_key="sk-test", max_calls=10), lab.log)
        idea = LLMProposer(llm).propose(lab, seed, thread="opt")
        cand = LLMImplementer(llm).implement(lab, idea, seed)   # first answer is empty: one repair round
    assert cand is not None and cand.idea_id == idea.id and cand.thread == "opt"
    assert lab.log.get("idea", idea.id).state is State.READY
    calls = lab.log.llm_calls()
    assert calls["purpose"].tolist() == ["propose", "implement", "repair"] and set(calls["idea_id"]) == {idea.id}
    assert lab.log.llm_totals()["calls"] == 3
