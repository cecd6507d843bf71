"""The eval runner through `evaluate`: metrics, resume, failures, concurrency, shards, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fixtures_eval import RuleTool, ScriptedSuite, prepare_walk, rule_loader, successor
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.results import read_jsonl
from toolrec_local.eval.session import EvalOptions, evaluate


@pytest.fixture
def walk(tmp_home):
    return prepare_walk(tmp_home)


def run(tmp_path, methods, suite=None, **kw):
    kw.setdefault("users", 40)
    kw.setdefault("seeds", 2)
    opts = EvalOptions.of(dataset="walk", methods=methods, out=tmp_path / "run", **kw)
    factory = (lambda names, ds, tools, **_: suite) if suite is not None else None
    return evaluate(opts, tool_loader=rule_loader, llm_factory=factory)


def lines(folder: Path, name: str = "results.jsonl") -> list[dict]:
    return read_jsonl(folder / name).records


def keys(records):
    return [(r["method"], r["seed"], r["user"]) for r in records]


def test_score_methods_rank_exactly_and_summarise(walk, tmp_path):
    summary, folder = run(tmp_path, "pop,sasrec,bert4rec,tool:genre")
    recs = lines(folder)
    assert len(recs) == 4 * 2 * 40 and len(set(keys(recs))) == len(recs)
    by = {m: [r for r in recs if r["method"] == m] for m in ("pop", "sasrec", "bert4rec", "tool:genre")}
    # the rule tool puts the successor first (sasrec) or fourth (bert4rec): exact ranks 0 and 3
    assert {r["rank"] for r in by["sasrec"]} == {0}
    assert {r["rank"] for r in by["bert4rec"]} == {3}
    for r in by["sasrec"]:
        assert r["final"][0] == r["target"] and len(r["final"]) == 10
    s = summary["methods"]
    assert s["sasrec"]["recall@5"] == {"mean": 1.0, "std": 0.0}
    assert s["bert4rec"]["ndcg@10"]["mean"] == pytest.approx(1 / math.log2(5))
    assert s["bert4rec"]["recall@10"]["mean"] == 1.0
    # pop: ranks recomputed independently from the training counts, history excluded
    ds = walk
    pop = ds.train_popularity
    for r in by["pop"]:
        u = ds.user(r["user"])
        hist, target = ds.split(u, "test")
        allowed = np.setdiff1d(np.arange(1, ds.n_items + 1), hist)
        others = allowed[allowed != target]
        assert r["rank"] == int((pop[others] >= pop[target]).sum())
        assert not set(r["final"]) & {ds.item_ids[i] for i in hist}
    # per-seed mean over users, then mean ± std over seeds
    per_seed = []
    for seed in (0, 1):
        ranks = np.array([r["rank"] for r in by["pop"] if r["seed"] == seed], dtype=float)
        per_seed.append(float((ranks < 10).mean()))
    assert s["pop"]["recall@10"]["mean"] == pytest.approx(np.mean(per_seed))
    assert s["pop"]["recall@10"]["std"] == pytest.approx(np.std(per_seed))
    assert s["pop"]["users"] == {"ok": 80, "failed": 0, "expected": 80}
    # Table 2's last row needs toolrec; without it there is none
    assert summary["improvement"] is None
    assert json.loads((folder / "summary.json").read_text())["methods"]["sasrec"]["complete"] is True


def test_users_are_the_seeded_samples_and_all_users_is_everyone(walk, tmp_path):
    _, folder = run(tmp_path, "pop")
    recs = lines(folder)
    for seed in (0, 1):
        expected = sorted(walk.user_ids[u] for u in walk.sample_users(40, seed))
        assert sorted(r["user"] for r in recs if r["seed"] == seed) == expected
    summary, folder2 = evaluate(EvalOptions.of(dataset="walk", methods="pop", all_users=True, out=tmp_path / "all"))
    recs2 = lines(folder2)
    assert len(recs2) == len(walk.eval_users) and {r["seed"] for r in recs2} == {0}


def test_rerun_resumes_without_duplicates_and_methods_can_be_added(walk, tmp_path):
    _, folder = run(tmp_path, "pop")
    first = (folder / "results.jsonl").read_bytes()
    run(tmp_path, "pop")
    assert (folder / "results.jsonl").read_bytes() == first  # nothing redone
    summary, _ = run(tmp_path, "pop,sasrec")
    recs = lines(folder)
    assert len(recs) == 2 * 80 and len(set(keys(recs))) == len(recs)
    assert json.loads((folder / "run.json").read_text())["methods"] == ["pop", "sasrec"]
    assert set(summary["methods"]) == {"pop", "sasrec"}


def test_another_configuration_in_the_same_folder_is_refused(walk, tmp_path):
    run(tmp_path, "pop")
    with pytest.raises(ToolrecError, match="another configuration.*users"):
        run(tmp_path, "pop", users=30)
    with pytest.raises(ToolrecError, match="seeds"):
        run(tmp_path, "pop", seeds=3)


def test_torn_last_line_is_cut_and_that_user_redone(walk, tmp_path):
    _, folder = run(tmp_path, "pop")
    path = folder / "results.jsonl"
    data = path.read_bytes().splitlines(keepends=True)
    lost = json.loads(data[-1])
    path.write_bytes(b"".join(data[:-1]) + data[-1][:37])  # killed in the middle of the last line
    run(tmp_path, "pop")
    recs = lines(folder)
    assert len(recs) == 80 and len(set(keys(recs))) == 80
    assert (lost["method"], lost["seed"], lost["user"]) in set(keys(recs))
    assert path.read_bytes().endswith(b"\n") and all(json.loads(l) for l in path.read_bytes().splitlines())


def test_llm_methods_run_concurrently_and_write_trajectories(walk, tmp_path):
    suite = ScriptedSuite(["toolrec", "llmrank"], walk, delay=0.02)
    summary, folder = run(tmp_path, "sasrec,toolrec,llmrank", suite, llm="tiny", concurrency=8)
    assert suite.peak == 8 and suite.closed
    recs = [r for r in lines(folder) if r["method"] == "toolrec"]
    assert len(recs) == 80
    for r in recs:
        u = walk.user(r["user"])
        hit = u % 2 == 0
        assert r["rank"] == (2 if hit else None)
        traj = r["trajectory"]
        with open(folder / traj["file"], "rb") as fh:
            fh.seek(traj["offset"])
            line = json.loads(fh.readline())
        assert line["user"] == r["user"] and len(line["trajectory"]["rounds"]) == r["rounds"]
    tr = summary["methods"]["toolrec"]
    hits = [r for r in recs if r["rank"] is not None]
    assert tr["rounds"]["all"] == {str(k): sum(1 for r in recs if r["rounds"] == k) for k in (1, 2, 3)}
    assert sum(tr["rounds"]["hits"].values()) == len(hits)
    assert tr["llm"]["tokens_in_per_user"] == pytest.approx(np.mean([r["tokens_in"] for r in recs]))
    assert tr["llm"]["repairs"] == sum(r["repairs"] for r in recs)
    # toolrec vs the best baseline present (sasrec: recall 1.0)
    imp = summary["improvement"]["recall@10"]
    assert imp["over"] == "sasrec" and imp["relative"] == pytest.approx(tr["recall@10"]["mean"] - 1.0)
    # beyond N = 10 ToolRec lists nothing, so no gain is claimed at @20
    assert summary["improvement"]["recall@20"]["relative"] is None


def test_local_backend_runs_one_user_at_a_time(walk, tmp_path):
    suite = ScriptedSuite(["single"], walk, delay=0.005)
    run(tmp_path, "single", suite, llm="tiny", backend="local", concurrency=16, users=10, seeds=1)
    assert suite.peak == 1


def test_failed_users_are_recorded_then_retried(walk, tmp_path):
    ds = walk
    sample = [ds.user_ids[u] for u in ds.sample_users(40, 0)][:5]
    suite = ScriptedSuite(["toolrec"], ds, fail_users=sample)
    summary, folder = run(tmp_path, "toolrec", suite, llm="tiny", concurrency=4)
    failed = [r for r in lines(folder) if r["status"] == "failed"]
    assert {r["user"] for r in failed} == set(sample) and all("server down" in r["error"] for r in failed)
    assert summary["methods"]["toolrec"]["users"]["failed"] == len(failed)
    assert summary["methods"]["toolrec"]["complete"] is False
    suite2 = ScriptedSuite(["toolrec"], ds)
    summary2, _ = run(tmp_path, "toolrec", suite2, llm="tiny", concurrency=4)
    assert {ds.user_ids[u] for _, _, u in suite2.calls} == set(sample)  # only the failed ones ran
    assert summary2["methods"]["toolrec"]["users"] == {"ok": 80, "failed": 0, "expected": 80}
    assert summary2["methods"]["toolrec"]["complete"] is True


def test_a_dead_server_stops_the_method_with_a_clear_error(walk, tmp_path):
    suite = ScriptedSuite(["toolrec"], walk, fail_all=True)
    with pytest.raises(ToolrecError, match="all failed.*server down"):
        run(tmp_path, "pop,toolrec", suite, llm="tiny", concurrency=2)
    recs = lines(tmp_path / "run")
    assert len([r for r in recs if r["method"] == "pop"]) == 80  # finished work is kept
    assert 10 <= len([r for r in recs if r["method"] == "toolrec"]) < 80


def test_shards_split_the_work_and_merge_to_the_whole(walk, tmp_path):
    from toolrec_local.eval.rundir import load_runs

    whole_summary, whole = run(tmp_path, "pop,sasrec")
    out = tmp_path / "sharded"
    for i in (1, 3):
        evaluate(EvalOptions.of(dataset="walk", methods="pop,sasrec", users=40, seeds=2, out=out, shard=(i, 3)),
                 tool_loader=rule_loader)
    view = load_runs([out])[0]
    assert view.missing_shards == ["2/3"]
    evaluate(EvalOptions.of(dataset="walk", methods="pop,sasrec", users=40, seeds=2, out=out, shard=(2, 3)),
             tool_loader=rule_loader)
    view = load_runs([out])[0]
    assert view.missing_shards == []
    assert sorted(keys(view.records)) == sorted(keys(lines(whole)))
    parts = [set(keys(lines(out, f"results.shard-{i}-of-3.jsonl"))) for i in (1, 2, 3)]
    assert not (parts[0] & parts[1]) and not (parts[1] & parts[2]) and not (parts[0] & parts[2])
    merged = json.loads((out / "summary.json").read_text())
    assert merged["methods"]["pop"]["recall@10"] == pytest.approx(whole_summary["methods"]["pop"]["recall@10"])
    assert merged["methods"]["pop"]["users"]["expected"] == 80
    with pytest.raises(ToolrecError, match="shards of 3"):
        evaluate(EvalOptions.of(dataset="walk", methods="pop", users=40, seeds=2, out=out, shard=(1, 2)))
    with pytest.raises(ToolrecError, match="shards of 3"):
        evaluate(EvalOptions.of(dataset="walk", methods="pop", users=40, seeds=2, out=out))


@pytest.mark.parametrize("methods, kw, match", [
    ("pop,nonsense", {}, "unknown method 'nonsense'"),
    ("tool:colour", {}, "no attribute 'colour'"),
    ("pop,toolrec", {}, "need an LLM"),
    ("toolrec", {"llm": "tiny", "backend": "carrier-pigeon"}, "unknown --backend"),
    ("", {}, "no method"),
])
def test_user_errors_are_toolrec_errors(walk, tmp_path, methods, kw, match):
    with pytest.raises(ToolrecError, match=match):
        run(tmp_path, methods, **kw)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_missing_checkpoint_is_a_toolrec_error(walk, tmp_path):
    with pytest.raises(ToolrecError, match="checkpoint|train"):
        evaluate(EvalOptions.of(dataset="walk", methods="sasrec", out=tmp_path / "run"))


def test_rule_tool_sanity(walk):
    t = RuleTool(walk)
    u = 3
    hist, target = walk.split(u, "test")
    assert successor(walk, int(hist[-1])) == target
    assert t.retrieve(u, None, 1)[0][0] == target


def test_shards_in_separate_folders_merge_into_one_run_in_the_report(walk, tmp_path):
    from toolrec_local.eval.report import write_report
    from toolrec_local.eval.rundir import load_runs

    _, whole = run(tmp_path, "pop,sasrec")
    folders = [tmp_path / f"node{i}" for i in (1, 2)]
    for i, folder in zip((1, 2), folders):
        evaluate(EvalOptions.of(dataset="walk", methods="pop,sasrec", users=40, seeds=2, out=folder, shard=(i, 2)),
                 tool_loader=rule_loader)
    views = load_runs(folders)
    assert len(views) == 1 and views[0].missing_shards == []
    assert sorted(keys(views[0].records)) == sorted(keys(lines(whole)))
    md, out, summaries = write_report(folders, tmp_path / "rep")
    text = md.read_text()
    assert text.count("## walk") == 1 and "Side by side" not in text
    assert str(folders[0]) in text and str(folders[1]) in text
    assert summaries[0]["methods"]["pop"]["users"] == {"ok": 80, "failed": 0, "expected": 80}
    only_one = write_report(folders[:1], tmp_path / "rep1")[0].read_text()
    assert "**Incomplete:** shards 2/2 are missing" in only_one
    assert "40 † (0 failed, 40 expected, shards missing)" in only_one


def test_report_puts_runs_with_different_llms_side_by_side(walk, tmp_path):
    from toolrec_local.eval.report import write_report

    for llm in ("model-a", "model-b"):
        suite = ScriptedSuite(["toolrec"], walk)
        evaluate(EvalOptions.of(dataset="walk", methods="sasrec,toolrec", llm=llm, users=10, seeds=2, out=tmp_path / llm),
                 tool_loader=rule_loader, llm_factory=lambda n, d, t, **kw: suite)
    md, out, summaries = write_report([tmp_path / "model-a", tmp_path / "model-b"], tmp_path / "rep")
    text = md.read_text()
    assert "## walk · model-a" in text and "## walk · model-b" in text and "## Side by side" in text
    for png in ("compare.png", "metrics-walk-model-a.png", "rounds-walk-model-b.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "| toolrec | all |" in text and "Improvement" in text


def test_grammar_mode_is_part_of_an_llm_run_identity(walk, tmp_path):
    from toolrec_local.eval.rundir import load_runs

    suite = ScriptedSuite(["toolrec"], walk)
    run(tmp_path, "toolrec", suite, llm="tiny", users=5, seeds=1)
    with pytest.raises(ToolrecError, match="grammar"):
        run(tmp_path, "toolrec", ScriptedSuite(["toolrec"], walk), llm="tiny", users=5, seeds=1, grammar=False)
    evaluate(EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=5, seeds=1, grammar=False,
                         out=tmp_path / "free"), tool_loader=rule_loader,
             llm_factory=lambda n, d, t, **kw: ScriptedSuite(["toolrec"], walk))
    labels = sorted(v.label for v in load_runs([tmp_path / "run", tmp_path / "free"]))
    assert labels == ["walk · tiny", "walk · tiny (free text)"]
