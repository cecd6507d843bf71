"""The evaluation protocol (issue 10, points 4, 8, 9): `--history exclude|keep`, methods compared
on the same (seed, user) pairs, and a run refused before any user starts leaving no folder."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from fixtures_eval import ScriptedSuite, prepare_walk, rule_loader, scripted_agent
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.report import summary_table, write_report
from toolrec_local.eval.results import read_jsonl
from toolrec_local.eval.rundir import RunConfig
from toolrec_local.eval.session import EvalOptions, evaluate
from toolrec_local.settings import RunSettings
from toolrec_local.eval.summary import summarize

AGENT_TURNS = ["Thought: the plain recommender first.\nAction: Retrieval[None, 20]",
               "Thought: and by genre.\nAction: Retrieval[genre, 20]",
               "Thought: rank them.\nAction: Rank[None, 10]",
               "Thought: good.\nAction: Finish"]
scripted_reply = scripted_agent(AGENT_TURNS)


def records(folder, method):
    return {(r["seed"], r["user"]): r for r in read_jsonl(folder / "results.jsonl").records if r["method"] == method}


def rendered(table) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return " ".join(console.export_text().split())  # a long title wraps; compare the words


def ndcg10(rank) -> float:
    return 1 / math.log2(rank + 2) if rank is not None and rank < 10 else 0.0


@pytest.fixture
def walk(tmp_home):
    return prepare_walk(tmp_home)


# ---- point 4: --history ----------------------------------------------------------------------
def test_history_keep_ranks_history_items_and_is_the_run_identity(walk, tmp_path):
    ds = walk
    kw = dict(dataset="walk", methods="pop,sasrec,tool:genre", users=30, seeds=1)
    excl, f_excl = evaluate(EvalOptions.of(**kw, out=tmp_path / "excl"), tool_loader=rule_loader)
    keep, f_keep = evaluate(EvalOptions.of(**kw, history="keep", out=tmp_path / "keep"), tool_loader=rule_loader)
    assert json.loads((f_keep / "run.json").read_text())["history"] == "keep"
    assert json.loads((f_excl / "run.json").read_text())["history"] == "exclude"
    assert (excl["history"], keep["history"]) == ("exclude", "keep")
    pop = ds.train_popularity
    history_in_top = 0
    for (seed, user), r in records(f_keep, "pop").items():
        hist, target = ds.split(ds.user(user), "test")
        others = np.setdiff1d(np.arange(1, ds.n_items + 1), [target])  # history included, padding not
        assert r["rank"] == int((pop[others] >= pop[target]).sum())
        history_in_top += bool(set(r["final"]) & {ds.item_ids[i] for i in hist})
        assert records(f_excl, "pop")[(seed, user)]["rank"] <= r["rank"]
    assert history_in_top > 0  # the walk's history items are popular: keep lists them, exclude never
    assert keep["methods"]["pop"]["ndcg@10"]["mean"] < excl["methods"]["pop"]["ndcg@10"]["mean"]
    # the rule tool puts the successor first either way; tool:genre ranks history items above it under keep
    assert keep["methods"]["sasrec"]["recall@5"]["mean"] == 1.0
    assert keep["methods"]["tool:genre"]["ndcg@20"]["mean"] < excl["methods"]["tool:genre"]["ndcg@20"]["mean"]
    with pytest.raises(ToolrecError, match="history: 'exclude' in the folder, 'keep' now"):
        evaluate(EvalOptions.of(**kw, history="keep", out=f_excl), tool_loader=rule_loader)
    # named in the terminal table's title, and in the report's table title and notes
    assert "history kept" in rendered(summary_table(keep)) and "history excluded" in rendered(summary_table(excl))
    md = write_report([f_excl, f_keep], tmp_path / "rep")[0].read_text()
    assert "## walk · no LLM\n" in md and "## walk · no LLM · history kept\n" in md
    assert "**walk · no LLM · history kept: full ranking over all items, the user's history included" in md
    assert "sequential full ranking), `--history keep`; every method on the same 30 (seed, user) pairs.**" in md
    assert "except the user's history, `--history exclude`; every method" in md
    assert "Protocol of each table: walk · no LLM: `--history exclude`; walk · no LLM · history kept: `--history keep`." in md
    with pytest.raises(ToolrecError, match="unknown --history"):
        evaluate(EvalOptions.of(**kw, history="drop", out=tmp_path / "bad"), tool_loader=rule_loader)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_ml100k_keep_moves_the_baselines_and_shows_toolrec_the_history(ml100k, ml100k_tools, session_home, tmp_path):
    """Real trained tools and the real agent loop (a scripted LLM): under keep the score methods
    rank history items too, so pop and SASRec move; ToolRec's retrieval lists then hold history
    items (the authors' RecBole tools do not mask them), but its answers never do."""
    from toolrec_local.eval.results import load_trajectory
    from toolrec_local.eval.catalog import build_llm_methods
    from toolrec_local.llm.backends.scripted import ScriptedBackend

    def factory(names, ds, tools, **kw):
        return build_llm_methods(names, ds, tools, **kw, backend_obj=ScriptedBackend([scripted_reply] * 10_000))

    runs = {}
    for history in ("exclude", "keep"):
        opts = EvalOptions.of(dataset="ml-100k", methods="pop,sasrec,toolrec", llm="tiny", users=6, seeds=1,
                           concurrency=4, history=history, out=tmp_path / history)
        runs[history] = evaluate(opts, llm_factory=factory)
    (excl, f_excl), (keep, f_keep) = runs["exclude"], runs["keep"]
    for m in ("pop", "sasrec"):
        a, b = records(f_excl, m), records(f_keep, m)
        assert a.keys() == b.keys() and len(a) == 6
        assert all((a[k]["rank"] or 0) <= b[k]["rank"] for k in a)  # more items compete under keep
        assert sum(b[k]["rank"] for k in a) > sum(a[k]["rank"] for k in a)
        assert excl["methods"][m]["ndcg@20"]["mean"] != keep["methods"][m]["ndcg@20"]["mean"]
    a, b = records(f_excl, "toolrec"), records(f_keep, "toolrec")
    assert a.keys() == b.keys() and all(r["status"] == "ok" for r in (*a.values(), *b.values()))
    shown = {}
    for folder, recs in ((f_excl, a), (f_keep, b)):
        shown[folder] = 0
        for r in recs.values():
            traj = load_trajectory(folder, r["trajectory"])
            history = set(traj["history"])
            assert len(set(r["final"])) == 10 and not set(r["final"]) & history
            shown[folder] += sum(len(set(rnd["observation"]) & history) for rnd in traj["rounds"])
    assert shown[f_excl] == 0 and shown[f_keep] > 0


# ---- point 8: paired comparison ----------------------------------------------------------------
def rec(method, seed, user, rank, status="ok"):
    return {"method": method, "seed": seed, "user": user, "rank": rank, "status": status}


def test_summary_compares_methods_on_the_pairs_all_of_them_finished():
    """Hand-built records: toolrec finished users a and b of seed 0 only, the variant
    toolrec/last-list a, b and c; pop and sasrec all four users of both seeds."""
    users = ["a", "b", "c", "d"]
    ranks = {"pop": [0, 12, 1, 3], "sasrec": [5, 0, 2, 40]}
    recs = [rec(m, s, u, r) for m, rs in ranks.items() for s in (0, 1) for u, r in zip(users, rs)]
    recs += [rec("toolrec", 0, "a", 1), rec("toolrec", 0, "b", None), rec("toolrec", 0, "c", None, "failed"),
             rec("toolrec", 0, "d", None, "failed")]
    recs += [rec("toolrec/last-list", 0, u, r) for u, r in zip(users[:3], (0, 3, 2))]
    cfg = RunConfig(dataset="d", dataset_fingerprint="x", methods=["pop", "sasrec", "toolrec"], seeds=[0, 1], users=4,
                    uses_llm=True, settings=RunSettings(llm="m"), expected={"0": 4, "1": 4})
    s = summarize(cfg, recs, cfg.expected)
    assert s["paired"] == {"users": 2, "per_seed": {"0": 2}, "methods": ["pop", "sasrec", "toolrec", "toolrec/last-list"],
                           "partial": True}
    m = s["methods"]
    # over (0, a) and (0, b) only: seed 1 has no pair, so one seed and no spread
    assert m["pop"]["recall@10"] == {"mean": 0.5, "std": 0.0}
    assert m["pop"]["ndcg@10"]["mean"] == pytest.approx((1 + 0) / 2)
    assert m["sasrec"]["ndcg@10"]["mean"] == pytest.approx((1 / math.log2(7) + 1) / 2)
    assert m["toolrec"]["ndcg@10"]["mean"] == pytest.approx((1 / math.log2(3) + 0) / 2)
    assert m["toolrec/last-list"]["ndcg@10"]["mean"] == pytest.approx((1 + 1 / math.log2(5)) / 2)
    assert m["pop"]["per_seed"]["0"]["users"] == 2
    # each method's own figures stay: pop over its 8 finished users (ranks 0, 12, 1, 3 in each seed)
    assert m["pop"]["all_users"]["recall@10"] == {"mean": 0.75, "std": 0.0}
    assert m["toolrec"]["all_users"]["ndcg@10"]["mean"] == m["toolrec"]["ndcg@10"]["mean"]
    assert m["toolrec"]["users"] == {"ok": 2, "failed": 2, "expected": 8}
    # Improvement over the same pairs: best baseline at NDCG@10 is sasrec there (pop at recall@10 ties it)
    imp = s["improvement"]["ndcg@10"]
    assert imp["over"] == "sasrec"
    assert imp["relative"] == pytest.approx(m["toolrec"]["ndcg@10"]["mean"] / m["sasrec"]["ndcg@10"]["mean"] - 1)


def test_a_partial_run_is_compared_on_the_users_every_method_finished(walk, tmp_path):
    """The runner with a scripted method that fails every other user: the table, the report and
    the improvement are over the users toolrec finished; re-run to completion, all looks as before."""
    ds = walk
    sample = [ds.user_ids[u] for u in ds.sample_users(20, 0)]
    failing = set(sample[1::2])
    opts = EvalOptions.of(dataset="walk", methods="pop,sasrec,toolrec", llm="tiny", users=20, seeds=1, concurrency=2,
                       out=tmp_path / "run")
    summary, folder = evaluate(opts, tool_loader=rule_loader,
                               llm_factory=lambda *a, **k: ScriptedSuite(["toolrec"], ds, fail_users=failing))
    finished = {u for (_, u), r in records(folder, "toolrec").items() if r["status"] == "ok"}
    assert finished == set(sample) - failing and len(finished) == 10
    assert summary["paired"] == {"users": 10, "per_seed": {"0": 10}, "methods": ["pop", "sasrec", "toolrec"],
                                 "partial": True}
    # by hand, from the records: each method over the users toolrec finished
    hand = {m: np.mean([ndcg10(r["rank"]) for (_, u), r in records(folder, m).items() if u in finished])
            for m in ("pop", "sasrec", "toolrec")}
    own_pop = np.mean([ndcg10(r["rank"]) for r in records(folder, "pop").values()])
    for m, v in hand.items():
        assert summary["methods"][m]["ndcg@10"]["mean"] == pytest.approx(v)
    assert summary["methods"]["pop"]["all_users"]["ndcg@10"]["mean"] == pytest.approx(own_pop)
    assert hand["pop"] != pytest.approx(own_pop)  # the sample makes the two differ, as in the demo
    imp = summary["improvement"]["ndcg@10"]
    assert imp["over"] == "sasrec" and imp["relative"] == pytest.approx(hand["toolrec"] / hand["sasrec"] - 1)
    text = rendered(summary_table(summary))
    assert "paired: rows compare the 10 (seed, user) pairs every method finished" in text
    assert "│ pop │" in text and "│ 10/20 │" in text and "│ 10/10 │" in text and "users: paired/finished" in text
    md = write_report([folder], tmp_path / "rep")[0].read_text()
    assert "paired: rows compare the 10 (seed, user) pairs every method finished, not each method's own users" in md
    assert "| 10 paired of 20 finished |" in md and "| 10 paired of 10 finished † (10 failed, 20 expected) |" in md
    assert "### Each method over all the users it finished" in md
    assert f"{hand['toolrec']:.4f}" in md and f"{own_pop:.4f}" in md

    # finished: paired = every user, and the table, the report and the summary look as they always did
    summary, _ = evaluate(opts, tool_loader=rule_loader, llm_factory=lambda *a, **k: ScriptedSuite(["toolrec"], ds))
    assert summary["paired"] == {"users": 20, "per_seed": {"0": 20}, "methods": ["pop", "sasrec", "toolrec"],
                                 "partial": False}
    for m in ("pop", "sasrec", "toolrec"):
        assert {k: summary["methods"][m][k] for k in ("ndcg@10", "recall@10")} == \
            {k: summary["methods"][m]["all_users"][k] for k in ("ndcg@10", "recall@10")}
    text = rendered(summary_table(summary))
    assert "paired" not in text and "20 users × 1 seed = 20 per method" in text
    md = write_report([folder], tmp_path / "rep2")[0].read_text()
    assert "every method on the same 20 (seed, user) pairs" in md and "### Each method over all" not in md


# ---- point 9: a refused run leaves no folder -----------------------------------------------------
def test_a_run_refused_at_connect_leaves_no_folder_and_an_existing_one_untouched(walk, tmp_path):
    from toolrec_local.eval.catalog import build_llm_methods
    from toolrec_local.llm.backends.scripted import ScriptedBackend

    class Unreachable(ScriptedBackend):
        async def connect(self):
            raise ToolrecError("cannot reach the vLLM server at http://127.0.0.1:9/v1", "start it: toolrec-local serve")

    def factory(names, ds, tools, **kw):
        holder.append(Unreachable([scripted_reply] * 100))
        return build_llm_methods(names, ds, tools, **kw, backend_obj=holder[-1])

    holder: list = []
    opts = EvalOptions.of(dataset="walk", methods="pop,toolrec", llm="tiny", users=5, seeds=1, out=tmp_path / "new")
    with pytest.raises(ToolrecError, match="cannot reach"):
        evaluate(opts, tool_loader=rule_loader, llm_factory=factory)
    assert not (tmp_path / "new").exists() and holder[-1].closed and not holder[-1].calls

    _, folder = evaluate(EvalOptions.of(dataset="walk", methods="pop", users=5, seeds=1, out=tmp_path / "old"),
                         tool_loader=rule_loader)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(ToolrecError, match="cannot reach"):
        evaluate(EvalOptions.of(dataset="walk", methods="pop,toolrec", llm="tiny", users=5, seeds=1, out=folder),
                 tool_loader=rule_loader, llm_factory=factory)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
