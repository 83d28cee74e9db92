"""The Dashboard agrees with the ledger: its one "best", the candidate tree, Reject with a
reason, and the loop's state when no loop runs (a real toy lab; the loop's own buttons are
driven on a real background loop in tests/test_background.py)."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("ipywidgets")

import autolab.ui as ui  # noqa: E402
from autolab.ledger import Ledger, current_owner  # noqa: E402
from autolab.records import State  # noqa: E402


def test_dashboard_best_tree_and_reject_follow_the_ledger(filled_lab):
    lab, seed, cand, bad = filled_lab["lab"], filled_lab["seed"], filled_lab["cand"], filled_lab["bad"]
    dash = ui.Dashboard(lab)
    assert Ledger(lab).best().id == cand.id
    assert f"{cand.id}" in dash.header.value and "no loop running" in dash.header.value
    assert "running freely" not in dash.header.value
    # the tree: the seed with its two children, each with its state; the ledger's best starred
    tree = dash.tree.value
    assert "Candidate tree" in tree and tree.count("└ ") == 2
    assert tree.index(seed.id[:12]) < tree.index(cand.id[:12]) and "Toggle the trick" in tree
    star_line = next(line for line in tree.split("</div>") if "★ best" in line)
    assert cand.id[:12] in star_line and "1.005" in star_line          # its selection-free mean
    bad_line = next(line for line in tree.split("</div>") if bad.id[:12] in line)
    assert " · t2" in bad_line and bad_line.rstrip().endswith("t2")    # a failed run shows no number
    assert next(label for label, v in dash.candidate.options if v == cand.id).endswith("· best")
    # Reject asks for a reason first and changes nothing without one
    dash.candidate.value = cand.id
    dash.reason.value = "  "
    dash.reject_button.click()
    assert lab.log.get("candidate", cand.id).state is State.PROMOTED and "reason" in dash.message.value
    dash.reason.value = "its gain comes from a leaked split"
    dash.reject_button.click()
    got = lab.log.get("candidate", cand.id)
    assert got.state is State.REJECTED and got.meta["reason"] == "its gain comes from a leaked split"
    # right after Reject, "best" is the ledger's again (the seed) everywhere the dashboard says it
    assert Ledger(lab).best().id == seed.id
    star_line = next(line for line in dash.tree.value.split("</div>") if "★ best" in line)
    assert seed.id[:12] in star_line and cand.id[:12] not in star_line
    assert next(label for label, v in dash.candidate.options if v == seed.id).endswith("· best")
    assert not next(label for label, v in dash.candidate.options if v == cand.id).endswith("· best")
    # no loop handle: the loop's own buttons are off, and Stop writes the STOP file (the CLI's way)
    assert dash.pause_button.disabled and dash.resume_button.disabled and dash.cancel_button.disabled
    assert bad.id in dash.tree.value


def test_dashboard_without_a_handle_reads_the_lab_folder(filled_lab):
    lab = filled_lab["lab"]
    (lab.path / "loop.lock").write_text(json.dumps(current_owner()))   # a loop of this process holds the lab
    try:
        dash = ui.Dashboard(lab)
        assert "running in this kernel" in dash.header.value and "loop=handle" in dash.header.value
        (lab.path / "loop.lock").write_text(json.dumps({**current_owner(), "pid": os.getppid(), "start": None}))
        dash.refresh()
        assert "running in another process" in dash.header.value and str(os.getppid()) in dash.header.value
        dash.stop_button.click()
        assert (lab.path / "STOP").exists() and "stop requested" in dash.header.value
    finally:
        (lab.path / "loop.lock").unlink()
    dash.refresh()
    assert "stop requested (no loop holds the lab)" in dash.header.value
    dash.pause_button.click()    # disabled in a browser; called anyway, it says what it needs
    assert "autolab.start_loop" in dash.message.value
