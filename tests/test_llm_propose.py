"""autolab.llm_propose: prompt contents, robust parsing, retry-then-FAILED, near-duplicate rejection."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from llm_server import ScriptedServer, completion, error, make_lab  # noqa: E402

from autolab.llm import LLM, LLMConfig  # noqa: E402
from autolab.llm_propose import LLMProposer, ProposalParseError, parse_idea_json, title_similarity  # noqa: E402
from autolab.records import Idea, Insight, Run, State  # noqa: E402


def idea_json(title, hypothesis="it should help", plan="change LEARNING_RATE in train.py", fence=True):
    body = json.dumps({"title": title, "hypothesis": hypothesis, "plan": plan})
    return f"Here is my proposal.\n```json\n{body}\n```\n" if fence else body


def requests(lab):
    return [json.loads(r) for r in lab.log.llm_calls()["request"]]


@pytest.fixture()
def lab_seed(tmp_path):
    return make_lab(tmp_path, brief="Minimize the loss of a toy model. BRIEF-MARKER\n")


# ---------------------------------------------------------------------------- parsing

@pytest.mark.parametrize("text", [
    '{"title": "T", "hypothesis": "H", "plan": "P"}',
    'Sure!\n```json\n{"title": "T", "hypothesis": "H", "plan": "P"}\n```\nGood luck.',
    'I think {"title": "T", "hypothesis": "H", "plan": "P",} is best',       # prose + trailing comma
    '```\n{"title": "T", "hypothesis": "H", "plan": ["P"]}\n```',             # plain fence, list plan
])
def test_parse_idea_json_accepts_common_shapes(text):
    d = parse_idea_json(text)
    assert d["title"] == "T" and d["hypothesis"] == "H" and d["plan"] in ("P", "- P")


def test_parse_idea_json_keeps_extra_keys():
    d = parse_idea_json('{"title": "T", "hypothesis": "H", "plan": "P", "risk": "R"}')
    assert d["extra"] == {"risk": "R"}


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("no json here", "no JSON object"),
    ('{"title": "T", "plan": "P"}', "hypothesis"),
    ('{"title": "", "hypothesis": "H", "plan": "P"}', "title"),
])
def test_parse_idea_json_errors_say_what_is_wrong(text, match):
    with pytest.raises(ProposalParseError, match=match):
        parse_idea_json(text)


def test_title_similarity():
    assert title_similarity("Raise the learning rate to 0.1", "raise learning rate to 0.1!") >= 0.85
    assert title_similarity("Use a cosine LR schedule", "LR schedule: use a cosine") >= 0.85   # token Jaccard
    assert title_similarity("Raise the learning rate to 0.1", "Add gradient clipping") < 0.5


# ---------------------------------------------------------------------------- proposing

def test_propose_happy_path_and_prompt_contents(lab_seed):
    lab, seed = lab_seed
    lab.log.append(Run(id="r-1", task=lab.task.name, candidate_id=seed.id, preset="cpu-tiny", seed=0,
                       purpose="baseline", state=State.COMPLETE, metrics={"loss": 0.4321}))
    lab.log.append(Run(id="r-2", task=lab.task.name, candidate_id=seed.id, preset="cpu-tiny", seed=1,
                       purpose="screen", state=State.FAILED, error={"ename": "MemoryError", "evalue": "OOM-MARKER"}))
    lab.log.append(Idea(id="i-old", task=lab.task.name, title="Switch the optimizer to Adam", source="playbook"))
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), lab.log, mock_response=idea_json("Raise the learning rate to 0.1"))
    insight = Insight(id="n-1", task="othertask", preset="p", technique="warmup then cosine decay", effect=0.02)

    idea = LLMProposer(llm).propose(lab, seed, thread="opt", direction="optimizer settings", insights=[insight])

    assert idea.state is State.PROPOSED and idea.title == "Raise the learning rate to 0.1"
    assert idea.source == "llm:openai/gpt-4o-mini" and idea.thread == "opt" and idea.parent_id == seed.id
    assert idea.hypothesis and idea.plan and idea.meta["usage"]["calls"] == 1
    assert lab.log.get("idea", idea.id) == idea
    (req,) = requests(lab)
    prompt = "\n".join(m["content"] for m in req["messages"])
    for needle in ("BRIEF-MARKER", "LEARNING_RATE = 0.01", "0.4321", "OOM-MARKER", "Switch the optimizer to Adam",
                   "warmup then cosine decay", "optimizer settings", "Best so far", '"title"'):
        assert needle in prompt, needle
    calls = lab.log.llm_calls()
    assert calls["idea_id"].tolist() == [idea.id] and calls["thread"].tolist() == ["opt"]


def test_malformed_answer_is_retried_once_then_succeeds(lab_seed):
    lab, seed = lab_seed
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), lab.log,
              mock_response=["I would try a bigger model.", idea_json("Widen the model to 16")])
    idea = LLMProposer(llm).propose(lab, seed)
    assert idea.state is State.PROPOSED and idea.title == "Widen the model to 16"
    second = requests(lab)[1]["messages"]
    assert second[-2]["content"] == "I would try a bigger model." and "could not be used" in second[-1]["content"]


def test_malformed_twice_gives_a_failed_idea(lab_seed):
    lab, seed = lab_seed
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), lab.log, mock_response=["nope", '{"title": "only a title"}'])
    idea = LLMProposer(llm).propose(lab, seed, thread="t2")
    assert idea.state is State.FAILED and "malformed" in idea.meta["error"] and "hypothesis" in idea.meta["error"]
    assert lab.log.get("idea", idea.id).state is State.FAILED
    assert len(lab.log.llm_calls()) == 2


def test_near_duplicate_is_sent_back_then_accepted(lab_seed):
    lab, seed = lab_seed
    lab.log.append(Idea(id="i-old", task=lab.task.name, title="Raise the learning rate to 0.1"))
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), lab.log,
              mock_response=[idea_json("Raise learning rate to 0.1"), idea_json("Add gradient clipping at 1.0")])
    idea = LLMProposer(llm).propose(lab, seed)
    assert idea.state is State.PROPOSED and idea.title == "Add gradient clipping at 1.0"
    assert "too close" in requests(lab)[1]["messages"][-1]["content"]


def test_near_duplicate_twice_is_rejected(lab_seed):
    lab, seed = lab_seed
    lab.log.append(Idea(id="i-old", task=lab.task.name, title="Raise the learning rate to 0.1"))
    llm = LLM(LLMConfig("openai/gpt-4o-mini"), lab.log,
              mock_response=[idea_json("Raise learning rate to 0.1"), idea_json("Raise the learning rate to 0.1.")])
    idea = LLMProposer(llm).propose(lab, seed)
    assert idea.state is State.REJECTED and idea.meta["duplicate_of"]
    assert [i.state for i in lab.log.ideas_list()] == [State.PROPOSED, State.REJECTED]


def test_propose_through_loopback_server_with_retries(lab_seed):
    lab, seed = lab_seed
    script = [error(429), completion("Let me think... {not: json"), completion(idea_json("Use momentum 0.9"))]
    with ScriptedServer(script) as srv:
        llm = LLM(LLMConfig("openai/local-model", api_base=srv.url, api_key="sk-test", retry_base_s=0.001), lab.log)
        idea = LLMProposer(llm).propose(lab, seed)
        assert srv.count() == 3
        assert srv.requests[-1]["body"]["messages"][-1]["role"] == "user"
    assert idea.state is State.PROPOSED and idea.title == "Use momentum 0.9"
    assert idea.source == "llm:openai/local-model"
    calls = lab.log.llm_calls()
    assert calls["ok"].tolist() == [0, 1, 1] and calls["purpose"].tolist() == ["propose", "propose", "propose:retry"]
    assert int(calls["prompt_tokens"].sum()) == 22
