import pytest

from autolab.errors import CandidateError
from autolab.diffs import diff_stat, merge3, unified_diff
from autolab.store import Store, candidate_id


def test_snapshot_is_content_addressed(tmp_path):
    s = Store(tmp_path)
    a = s.snapshot({"train.py": "x = 1\n"})
    b = s.snapshot({"train.py": "x = 1\n"})
    assert a == b and candidate_id(a) == candidate_id(b)
    assert len(list((tmp_path / "objects").rglob("*"))) == 2  # one folder + one object
    assert s.read(a) == {"train.py": "x = 1\n"}
    out = s.materialize(a, tmp_path / "m")
    assert (out / "train.py").read_text() == "x = 1\n"
    with pytest.raises(CandidateError):
        s.snapshot({"../evil.py": "x"})


def test_corrupt_object_detected(tmp_path):
    s = Store(tmp_path)
    files = s.snapshot({"a.py": "a = 1\n"})
    obj = next(p for p in (tmp_path / "objects").rglob("*") if p.is_file())
    obj.write_text("tampered")
    with pytest.raises(CandidateError, match="corrupt"):
        s.read(files)


def test_unified_diff():
    d = unified_diff({"t.py": "a = 1\nb = 2\n"}, {"t.py": "a = 1\nb = 3\n"})
    assert "--- a/t.py" in d and "+b = 3" in d and "-b = 2" in d
    assert diff_stat(d) == (1, 1)


BASE = "".join(f"line {i}\n" for i in range(10))


def test_merge3_combines_disjoint_edits():
    ours = BASE.replace("line 1\n", "line one\n")
    theirs = BASE.replace("line 8\n", "line eight\n")
    m = merge3(BASE, ours, theirs)
    assert m.clean and "line one\n" in m.text and "line eight\n" in m.text


def test_merge3_identical_edits_are_not_conflicts():
    ours = theirs = BASE.replace("line 4\n", "line four\n")
    assert merge3(BASE, ours, theirs).clean


def test_merge3_conflict_marked():
    ours = BASE.replace("line 4\n", "line A\n")
    theirs = BASE.replace("line 4\n", "line B\n")
    m = merge3(BASE, ours, theirs)
    assert m.conflicts == 1 and "<<<<<<< ours" in m.text and ">>>>>>> theirs" in m.text


def test_merge3_insertions_and_deletions():
    ours = BASE.replace("line 2\n", "")
    theirs = BASE + "line 10\n"
    m = merge3(BASE, ours, theirs)
    assert m.clean and "line 2\n" not in m.text and m.text.endswith("line 10\n")
