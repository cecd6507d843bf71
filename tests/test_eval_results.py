"""results.jsonl: a file cut at any byte reads back as its complete lines, and appending after
`repair_tail` never glues a new line onto a torn one."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from toolrec_local.eval.results import ResultsWriter, latest_by_key, load_trajectory, read_jsonl, repair_tail


def rec(method="pop", seed=0, user="u1", status="ok", rank=3):
    return {"method": method, "seed": seed, "user": user, "status": status, "rank": rank, "title": "Amélie (2001)"}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 8), cut=st.floats(0, 1))
def test_any_cut_reads_back_as_the_complete_lines(tmp_path_factory, n, cut):
    folder = tmp_path_factory.mktemp("cut")
    path = folder / "results.jsonl"
    records = [rec(user=f"u{i}") for i in range(n)]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    at = int(cut * len(data))
    path.write_bytes(data[:at])
    whole_lines = data[:at].count(b"\n")
    assert read_jsonl(path).records == records[:whole_lines]
    dropped = repair_tail(path)
    assert path.read_bytes() == data[: len(data[:at]) - dropped]
    assert path.read_bytes().count(b"\n") == whole_lines and (not path.read_bytes() or path.read_bytes().endswith(b"\n"))
    with ResultsWriter(path, folder / "trajectories.jsonl") as w:
        w.write(rec(user="new"))
    back = read_jsonl(path)
    assert back.bad_lines == 0 and back.records == records[:whole_lines] + [rec(user="new")]


def test_ok_wins_over_failures_and_the_first_ok_is_kept():
    recs = [rec(status="failed", rank=None), rec(rank=1), rec(rank=2), rec(user="u2", status="failed", rank=None),
            rec(user="u2", status="failed", rank=None) | {"error": "second"}]
    best = latest_by_key(recs)
    assert best[("pop", 0, "u1")]["rank"] == 1
    assert best[("pop", 0, "u2")]["error"] == "second"


def test_lines_that_are_not_records_are_counted_not_read(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec()) + "\n[1, 2]\nnot json\n" + json.dumps({"a": 1}) + "\n")
    back = read_jsonl(path)
    assert len(back.records) == 1 and back.bad_lines == 3


def test_trajectory_pointer_finds_its_line_and_resume_index_is_loaded(tmp_path):
    path = tmp_path / "results.jsonl"
    with ResultsWriter(path, tmp_path / "trajectories.jsonl") as w:
        w.write(rec(user="a"), {"rounds": [1]})
        w.write(rec(user="b"), {"rounds": [1, 2]})
        w.write(rec(user="c", status="failed", rank=None))
    recs = read_jsonl(path).records
    assert load_trajectory(tmp_path, recs[1]["trajectory"]) == {"rounds": [1, 2]}
    assert load_trajectory(tmp_path, None) is None
    w2 = ResultsWriter(path, tmp_path / "trajectories.jsonl")
    assert w2.done() == {("pop", 0, "a"), ("pop", 0, "b")}
    w2.close()
