"""Where hits are won and lost (eval/hits.py, eval/hits_report.py): the per-user classes, the
pick-position and copying figures of the LLM ranking calls, the tool calls per round, on
hand-made trajectories and on real ones from the agent with a scripted backend."""

from __future__ import annotations

import json

import pytest

from fixtures_eval import prepare_walk, rule_loader, scripted_agent
from toolrec_local.eval.hits import call_profile, hits_block, ranking_calls, tool_calls, user_hits
from toolrec_local.eval.hits_report import hits_section
from toolrec_local.eval.catalog import build_llm_methods
from toolrec_local.eval.report import write_report
from toolrec_local.eval.results import load_trajectory, read_jsonl
from toolrec_local.eval.session import EvalOptions, evaluate
from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.llm.protocol import ItemListGrammar

ITEMS = [f"i{n}" for n in range(1, 41)]
TARGET = "t"


def step(action, observation=(), note="", shown=None, picked=None, calls=1):
    out = {"action": action, "observation": list(observation), "note": note, "llm_calls": calls}
    if shown is not None:
        out.update(shown=shown, picked=len(observation) if picked is None else picked)
    return out


def agent(rounds, finish):
    return {"user": "u", "target": TARGET, "final": finish["observation"], "rounds": rounds, "finish": finish}


def record(traj, rank=None, user="u1", method="toolrec"):
    final = traj["final"] if traj else []
    return {"method": method, "seed": 0, "user": user, "status": "ok", "target": TARGET, "rank": rank,
            "final": final, "trajectory": traj}  # an inline trajectory: load_trajectory returns it


def gathered_then_final(retrieved, final, note="the LLM's top 10"):
    lists = [{"mark": "Retrieval[None, 20]", "items": retrieved}]
    return agent([step("Retrieval[None, 20]", retrieved), step("Finish")],
                 step("Finish", final, note=note, shown=lists))


def test_never_gathered_ranked_out_and_kept_from_hand_made_trajectories():
    never = gathered_then_final(ITEMS[:20], ITEMS[:10])
    out_items = ITEMS[:6] + [TARGET] + ITEMS[6:19]  # the target 7th in the only tool list
    ranked_out = gathered_then_final(out_items, ITEMS[:10])
    kept_final = ITEMS[:2] + [TARGET] + ITEMS[2:9]
    kept = gathered_then_final(out_items, kept_final)
    # gathered, then cut from the final ranking's prompt to fit the context: the LLM never saw it
    cut = agent([step("Retrieval[None, 20]", out_items), step("Finish")],
                step("Finish", ITEMS[:10], note="10 of 20 candidates shown (taken from each list in turn)",
                     shown=[{"mark": "Retrieval[None, 20]", "items": out_items[:5] + out_items[7:12]}]))
    records = [record(never, user="u1"), record(ranked_out, user="u2"), record(kept, rank=2, user="u3"),
               record(cut, user="u4"), record(None, user="u5")]
    rows = [user_hits(r, r["trajectory"]) for r in records]
    assert [r["class"] for r in rows] == ["never_gathered", "ranked_out", "kept", "ranked_out", "unknown"]
    assert [r["best_list_rank"] for r in rows] == [None, 7, 7, 7, None]
    assert [r["final_position"] for r in rows] == [None, None, 3, None, None]
    assert [r["target_shown"] for r in rows] == [False, True, True, False, None]

    h = hits_block(records)
    assert h["users"] == 5
    assert {c: v["n"] for c, v in h["classes"].items()} == {"never_gathered": 1, "ranked_out": 2, "kept": 1, "unknown": 1}
    assert h["classes"]["ranked_out"]["share"] == 0.4 and h["classes"]["kept"]["share"] == 0.2
    assert h["ranked_out_unseen"] == 1  # u4: lost to the context cut, not to the LLM's choice
    assert h["best_list_rank"] == {"1-5": 0, "6-10": 3, "11-20": 0, "21-30": 0, ">30": 0}
    assert h["kept_positions"] == {"3": 1}


def test_the_target_in_the_final_steps_top_up_is_gathered():
    """conclude tops a short pool up with the backbone's next items (Retrieval[None, m]): in the pool."""
    topup = [TARGET, "i39"]
    lists = [{"mark": "Retrieval[genre, 8]", "items": ITEMS[:8]}, {"mark": "Retrieval[None, 2]", "items": topup}]
    traj = agent([step("Retrieval[genre, 8]", ITEMS[:8]), step("Finish")],
                 step("Finish", ITEMS[:8] + ["i39", "i40"],
                      note="8 gathered: added the backbone's top 2 as Retrieval[None, 2]; the LLM's top 10", shown=lists))
    row = user_hits(record(traj), traj)
    assert row["class"] == "ranked_out" and row["best_list_rank"] == 1


def ranker(picks, shown=None, picked=None, note="", repairs=0, record_shown=True):
    groups = shown or [{"mark": "Retrieval[None, 30]", "items": ITEMS[:30]}]
    traj = {"method": "llmrank", "groups": groups, "final": picks, "note": note,
            "totals": {"llm_calls": 1, "repairs": repairs}}
    if record_shown:
        traj.update(shown=groups, picked=len(picks) if picked is None else picked)
    return traj


def positions(*ns):
    return [ITEMS[n - 1] for n in ns]


def test_a_copying_ranker_is_measured_as_copying():
    copier = call_profile(ranker([])["shown"], positions(*range(8, 18)))  # 8, 9, 10, 11 ... 17
    assert copier["positions"] == list(range(8, 18))
    assert copier["adjacent"] == copier["pairs"] == 9 and copier["longest_run"] == 10
    assert not copier["in_order"] and copier["chance"] == pytest.approx(1 / 30)
    # the 1.5B model's llmrank lists in issue 23: 8, 7, 9, 10, 11
    mixed = call_profile(ranker([])["shown"], positions(8, 7, 9, 10, 11))
    assert (mixed["adjacent"], mixed["pairs"], mixed["longest_run"]) == (2, 4, 3)
    ranking = call_profile(ranker([])["shown"], positions(3, 1, 12, 7, 30, 2, 18, 5, 25, 9))
    assert ranking["adjacent"] == 0 and ranking["longest_run"] == 1
    kept_order = call_profile(ranker([])["shown"], positions(*range(1, 11)))
    assert kept_order["in_order"] and kept_order["adjacent"] == 9
    # several lists: the next line of any shown list counts; positions in the order first shown
    lists = [{"mark": "Retrieval[None, 3]", "items": ["a1", "a2", "a3"]},
             {"mark": "Retrieval[genre, 4]", "items": ["b1", "a2", "b2", "b3"]}]
    multi = call_profile(lists, ["b2", "b3", "a1", "a2", "b2"])
    assert multi["positions"] == [5, 6, 1, 2, 5] and multi["adjacent"] == 3 and multi["longest_run"] == 3
    assert multi["chance"] == pytest.approx(5 / (6 * 5))

    h = hits_block([record(ranker(positions(*range(8, 18))), method="llmrank", user=f"u{n}") for n in range(3)] +
                   [record(ranker(positions(3, 1, 12, 7, 30, 2, 18, 5, 25, 9)), method="llmrank", user="u9")])
    r = h["ranking"]["list"]
    assert (r["calls"], r["measured"], r["picks"]) == (4, 4, 40)
    assert r["positions"] == {"1-5": 4, "6-10": 3 * 3 + 2, "11-20": 3 * 7 + 2, "21-30": 2, ">30": 0}
    assert r["adjacent_share"] == pytest.approx(27 / 36, abs=1e-4) and r["longest_run"] == {"mean": 7.75, "max": 10}
    assert r["in_order"] == 0.0 and h["tool_calls"] is None  # a baseline makes no tool calls


def test_a_repair_fill_is_not_counted_as_the_llms_picks():
    picks = positions(8, 9, 10, 1, 2, 3)  # the LLM wrote 3 valid items; 3 were filled by score
    (_, shown, taken), = ranking_calls(ranker(picks, picked=3))
    assert taken == positions(8, 9, 10)
    assert call_profile(shown, taken)["longest_run"] == 3


def test_older_trajectories_degrade_to_what_they_record(tmp_path):
    """Run folders from before `shown`/`picked`: the agent's calls are counted, not measured;
    a baseline's call is measured on its given lists when nothing was cut and nothing repaired."""
    retrieved = ITEMS[:20]
    old_agent = agent([step("Retrieval[None, 20]", retrieved), step("Rank[None, 10]", ITEMS[:10]), step("Finish")],
                      step("Finish", ITEMS[:10], note="the LLM's top 10"))
    assert [(k, s, p) for k, s, p in ranking_calls(old_agent)] == [("rank", None, None), ("final", None, None)]
    plain = ranker(positions(*range(1, 11)), record_shown=False)
    cut = ranker(positions(*range(1, 11)), record_shown=False, note="20 of 30 candidates shown (taken from each list in turn)")
    repaired = ranker(positions(*range(1, 11)), record_shown=False, repairs=1)
    assert ranking_calls(plain)[0][2] == positions(*range(1, 11))
    assert ranking_calls(cut)[0][1:] == (None, None) and ranking_calls(repaired)[0][2] is None

    h = hits_block([record(old_agent)])
    assert h["classes"]["never_gathered"]["n"] == 1  # the pool is still read from the observations
    assert h["ranking"]["rank"]["measured"] == 0 and h["ranking"]["rank"]["mean_position"] is None
    summaries = [("old run", {"methods": {"toolrec": {"hits": h}}})]
    md = "\n".join(hits_section(summaries, tmp_path))
    row = next(line for line in md.splitlines() if line.startswith("| toolrec | Rank tool"))
    assert "| 1 (0) |" in row and row.count("n/a") >= 5


def test_tool_calls_per_round_count_attributes_k_and_repeats():
    traj = agent([step("Retrieval[genre, 20]", ITEMS[:20]), step("Retrieval[genre, 20]", ITEMS[:20]),
                  step("Thought: hm\nAction: Search[x]", note="Invalid action: unknown tool"),
                  step("Rank[None, 10]", ITEMS[:10], note="Invalid action: Rank needs gathered movies"),
                  step("Retrieval[release_year, 50]", ITEMS[:30], note="K=60 clamped to 50"), step("Finish")],
                 step("Finish", ITEMS[:10]))
    calls = tool_calls(traj)
    assert [c["tool"] for c in calls] == ["Retrieval", "Retrieval", "invalid", "Rank", "Retrieval", "Finish"]
    assert [c["repeat"] for c in calls] == [False, True, False, False, False, False]
    h = hits_block([record(traj, user="a"), record(traj, user="b")])["tool_calls"]
    assert h["rounds"]["2"] == {"calls": 2, "tools": {"Retrieval": 2}, "attributes": {"genre": 2}, "k": {"20": 2},
                                "repeats": 2}
    assert h["total"]["attributes"] == {"genre": 4, "release_year": 2, "None": 2}
    assert h["total"]["k"] == {"10": 2, "20": 4, "50": 2} and h["total"]["tools"]["invalid"] == 2
    # an invalid Rank made no ranking call; the final step did
    assert [k for k, _, _ in ranking_calls(traj)] == ["final"]


# ---- real trajectories: the agent and the baselines with a scripted backend -------------------
TURNS = ["Thought: genre first.\nAction: Retrieval[genre, 20]",
         "Thought: again.\nAction: Retrieval[genre, 20]",
         "Thought: and the plain recommender.\nAction: Retrieval[None, 20]",
         "Thought: rank them.\nAction: Rank[None, 10]",
         "Thought: good.\nAction: Finish"]


def last_options(messages, constraint):
    """Like scripted_agent, but every ranking writes the LAST k options: SASRec's first
    item, the target of the walk dataset's rule tool, is ranked out."""
    if isinstance(constraint, ItemListGrammar):
        return "\n".join(constraint.options[-constraint.k:])
    return scripted_agent(TURNS)(messages, constraint)


def run(tmp_path, name, reply):
    def factory(names, ds, tools, **kw):
        return build_llm_methods(names, ds, tools, **kw, backend_obj=ScriptedBackend([reply] * 100_000))

    return evaluate(EvalOptions.of(dataset="walk", methods="sasrec,toolrec,llmrank,multi", llm=name, users=4, seeds=1,
                                out=tmp_path / name), tool_loader=rule_loader, llm_factory=factory)


def test_real_trajectories_record_what_each_ranking_call_was_shown(tmp_home, tmp_path):
    prepare_walk(tmp_home)
    summary, folder = run(tmp_path, "keeps", scripted_agent(TURNS))
    recs = {(r["method"], r["user"]): r for r in read_jsonl(folder / "results.jsonl").records}
    for (method, _), r in recs.items():
        traj = load_trajectory(folder, r.get("trajectory"))
        if method == "toolrec":
            rank_step, finish = traj["rounds"][3], traj["finish"]
            assert [g["mark"] for g in rank_step["shown"]] == ["Retrieval[genre, 20]"] * 2 + ["Retrieval[None, 20]"]
            assert [g["mark"] for g in finish["shown"]][-1] == "Rank[None, 10]" and finish["picked"] == 10
            assert rank_step["picked"] == 10 and "shown" not in traj["rounds"][0]  # a Retrieval shows nothing
        elif method in ("llmrank", "multi"):
            assert traj["picked"] == 10 and {i for g in traj["shown"] for i in g["items"]} >= set(traj["final"])
    hits = {m: summary["methods"][m]["hits"] for m in ("toolrec", "llmrank", "multi")}
    assert "hits" not in summary["methods"]["sasrec"]
    assert all(h["classes"]["kept"]["n"] == 4 for h in hits.values())  # the rule tool ranks the target first
    # the scripted ranker keeps llmrank's one list as shown: copying, in order
    assert hits["llmrank"]["ranking"]["list"]["adjacent_share"] == 1.0 and hits["llmrank"]["ranking"]["list"]["in_order"] == 1.0
    # the final step copies the Rank list it was shown
    assert hits["toolrec"]["ranking"]["final"]["longest_run"] == {"mean": 10.0, "max": 10}
    assert hits["toolrec"]["tool_calls"]["rounds"]["2"]["repeats"] == 4
    on_disk = json.loads((folder / "summary.json").read_text())
    assert on_disk["methods"]["toolrec"]["hits"] == hits["toolrec"]


def test_gathered_then_ranked_out_and_the_report_side_by_side(tmp_home, tmp_path):
    prepare_walk(tmp_home)
    _, keeps = run(tmp_path, "keeps", scripted_agent(TURNS))
    summary, drops = run(tmp_path, "drops", last_options)
    for m in ("toolrec", "llmrank", "multi"):
        h = summary["methods"][m]["hits"]
        assert h["classes"]["ranked_out"]["n"] == 4 and h["best_list_rank"]["1-5"] == 4, m
        assert h["ranked_out_unseen"] == 0  # the LLM saw the target and left it out
    llmrank = summary["methods"]["llmrank"]["hits"]["ranking"]["list"]
    assert llmrank["positions"]["21-30"] == 40 and llmrank["adjacent_share"] == 1.0 and llmrank["in_order"] == 0.0

    md_path, out, _ = write_report([keeps, drops], tmp_path / "rep")
    md = md_path.read_text()
    assert "## Where hits are won and lost" in md and "![hits](hits.png)" in md
    head = next(line for line in md.splitlines() if "target never gathered" in line)
    assert head.startswith("| Run | Method | users | target never gathered | gathered but ranked out by the LLM | kept |")
    assert "| walk · drops | llmrank | 4 | 0 (0.0%) | 4 (100.0%) | 0 (0.0%) | 0 |" in md
    assert "| walk · keeps | llmrank | 4 | 0 (0.0%) | 0 (0.0%) | 4 (100.0%) | 0 | 1: 4 |" in md
    assert "| walk · drops | llmrank | ranking call | 4 (4) | 0% | 0% | 0% | 100% | 0% | 25.5 | 100% (3%) | 10.0 / 10 | 0% |" in md
    assert "| walk · keeps | toolrec | 2 | 4 | 4 | 0 | 0 | 0 | genre: 4 | 20: 4 | 4 |" in md
    png = (out / "hits.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    single = write_report([keeps], tmp_path / "rep1")[1] / "hits.png"
    assert matplotlib.image.imread(out / "hits.png").shape[1] > matplotlib.image.imread(single).shape[1]  # two panels
