"""The authors' conditions and the fallbacks through `eval` (the real agent, a scripted
backend, the walk dataset): `--answer-space`, `--finish` in the run's identity, a resumed
`--finish both` writing both rows from one trajectory, and every fallback counted in
results.jsonl, summary.json, the terminal and the report."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fixtures_eval import prepare_walk, rule_loader, scripted_agent
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.catalog import build_llm_methods
from toolrec_local.eval.report import fallback_line, summary_table, write_report
from toolrec_local.eval.results import ResultsWriter, latest_by_key, load_trajectory, read_jsonl
from toolrec_local.eval.session import EvalOptions, evaluate
from toolrec_local.llm.backends.scripted import ScriptedBackend
from toolrec_local.llm.protocol import ItemListGrammar

AGENT_TURNS = ["Thought: genre first.\nAction: Retrieval[genre, 20]",
               "Thought: and the plain recommender.\nAction: Retrieval[None, 20]",
               "Thought: rank them.\nAction: Rank[None, 10]",
               "Thought: good.\nAction: Finish"]
SHORT_TURNS = ["Thought: a few.\nAction: Retrieval[genre, 4]", "Thought: done.\nAction: Finish"]


@pytest.fixture
def walk(tmp_home):
    return prepare_walk(tmp_home)


def factory_for(reply, holder=None):
    def factory(names, ds, tools, **kw):
        backend = ScriptedBackend([reply] * 100_000)
        if holder is not None:
            holder["backend"] = backend
        return build_llm_methods(names, ds, tools, **kw, backend_obj=backend)

    return factory


def reversed_lists(turns):
    """The scripted agent, but every item list written from the back: another trajectory."""
    agent = scripted_agent(turns)

    def reply(messages, constraint):
        if isinstance(constraint, ItemListGrammar):
            return "\n".join(constraint.options[-constraint.k:])
        return agent(messages, constraint)

    return reply


def rows(folder) -> dict:
    return {(r["method"], r["user"]): r for r in latest_by_key(read_jsonl(folder / "results.jsonl").records).values()}


def assert_pairs_from_one_trajectory(folder, users: int):
    recs = rows(folder)
    main = [(m, u) for m, u in recs if m == "toolrec"]
    assert len(main) == users and len(recs) == 2 * users
    for _, user in main:
        r, last = recs[("toolrec", user)], recs[("toolrec/last-list", user)]
        t, lt = load_trajectory(folder, r["trajectory"]), load_trajectory(folder, last["trajectory"])
        assert t["rounds"] == lt["rounds"] and last["final"] == t["last_list"]["final"] == lt["final"]


OPTS = dict(dataset="walk", methods="toolrec", llm="tiny", users=6, seeds=1, concurrency=1, finish="both")


def test_a_both_run_killed_between_its_two_rows_is_redone_from_one_trajectory(walk, tmp_path, monkeypatch):
    out = tmp_path / "run"
    written = {"n": 0}
    real_write = ResultsWriter.write

    def write_then_die(self, record, trajectory=None):  # the process dies right after a flushed line
        real_write(self, record, trajectory)
        if record["method"] == "toolrec/last-list":
            written["n"] += 1
            if written["n"] == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(ResultsWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        evaluate(EvalOptions.of(**OPTS, out=out), tool_loader=rule_loader, llm_factory=factory_for(scripted_agent(AGENT_TURNS)))
    monkeypatch.setattr(ResultsWriter, "write", real_write)
    before = rows(out)
    orphans = [u for m, u in before if m == "toolrec/last-list" and ("toolrec", u) not in before]
    assert len(orphans) == 1 and len([k for k in before if k[0] == "toolrec"]) == 2
    orphan = before[("toolrec/last-list", orphans[0])]

    # resumed: another trajectory for the orphan's user (the lists are written from the back)
    summary, _ = evaluate(EvalOptions.of(**OPTS, out=out), tool_loader=rule_loader,
                          llm_factory=factory_for(reversed_lists(AGENT_TURNS)))
    after = rows(out)
    assert_pairs_from_one_trajectory(out, 6)
    replaced = after[("toolrec/last-list", orphans[0])]
    assert replaced["replaces"] is True and replaced["final"] != orphan["final"]
    assert all(after[k] == before[k] for k in before if k[1] != orphans[0])  # finished pairs kept as they were
    assert summary["methods"]["toolrec"]["users"]["ok"] == summary["methods"]["toolrec/last-list"]["users"]["ok"] == 6
    lines = read_jsonl(out / "results.jsonl").records
    assert sum(1 for r in lines if (r["method"], r["user"]) == ("toolrec/last-list", orphans[0])) == 2

    # a folder whose variant row is missing (an older run's orphan): both rows are written again
    user = next(u for m, u in after if m == "toolrec" and u != orphans[0])
    kept = [json.dumps(r) for r in lines if (r["method"], r["user"]) != ("toolrec/last-list", user)]
    (out / "results.jsonl").write_text("".join(line + "\n" for line in kept))
    evaluate(EvalOptions.of(**OPTS, out=out), tool_loader=rule_loader, llm_factory=factory_for(reversed_lists(AGENT_TURNS)))
    again = rows(out)
    assert again[("toolrec", user)]["replaces"] is True and again[("toolrec", user)]["final"] != after[("toolrec", user)]["final"]
    assert_pairs_from_one_trajectory(out, 6)


def test_catalogue_answers_are_recorded_in_the_identity_and_named_in_the_report(walk, tmp_path):
    holder = {}
    out = tmp_path / "run"
    opts = dict(dataset="walk", methods="pop,toolrec", llm="tiny", users=3, seeds=1, history="keep", out=out)
    summary, folder = evaluate(EvalOptions.of(**opts, answer_space="catalogue"), tool_loader=rule_loader,
                               llm_factory=factory_for(scripted_agent(AGENT_TURNS), holder))
    finals = [c for c in holder["backend"].calls if isinstance(c.constraint, ItemListGrammar)]
    history = len(walk.split(int(walk.sample_users(3, 0)[0]), "test")[0])
    assert finals and all(len(c.constraint.options) == walk.n_items - history for c in finals)  # the catalogue
    run = json.loads((folder / "run.json").read_text())
    assert run["answer_space"] == "catalogue" and run["history"] == "keep"
    assert summary["answer_space"] == "catalogue"
    md = write_report([folder])[0].read_text()
    assert "`--history keep --answer-space catalogue`: the authors' condition" in md
    assert "catalogue answers" in md.splitlines()[2]  # the section title names it
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(summary_table(summary))
    assert "catalogue answers (the authors' condition)" in " ".join(console.export_text().split())  # the title wraps
    with pytest.raises(ToolrecError, match="answer_space: 'catalogue' in the folder, 'gathered' now") as err:
        evaluate(EvalOptions.of(**opts), tool_loader=rule_loader, llm_factory=factory_for(scripted_agent(AGENT_TURNS)))
    assert "one --answer-space" in err.value.hint
    with pytest.raises(ToolrecError, match="unknown --answer-space"):
        evaluate(EvalOptions.of(**{**opts, "out": tmp_path / "x"}, answer_space="everything"), tool_loader=rule_loader)
    # the default is named too
    s2, f2 = evaluate(EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=2, seeds=1, out=tmp_path / "g"),
                      tool_loader=rule_loader, llm_factory=factory_for(scripted_agent(AGENT_TURNS)))
    assert s2["answer_space"] == "gathered" and "(`--answer-space gathered`)" in write_report([f2])[0].read_text()


def test_fallbacks_are_counted_per_user_summed_and_said_in_one_line(walk, tmp_path, monkeypatch):
    """Four gathered items: the final step is topped up from the backbone (toolrec rows), the
    last-list answer padded by score (toolrec/last-list rows)."""
    out = tmp_path / "run"
    factory = factory_for(scripted_agent(SHORT_TURNS))
    from toolrec_local.eval import session

    real = session.evaluate
    monkeypatch.setattr(session, "evaluate", lambda opts, **kw: real(opts, tool_loader=rule_loader, llm_factory=factory, **kw))
    from toolrec_local.cli import app

    result = CliRunner().invoke(app, ["eval", "--dataset", "walk", "--method", "toolrec", "--llm", "tiny", "--users", "3",
                                      "--seeds", "1", "--finish", "both", "--out", str(out)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if line.startswith("Fallbacks taken")]
    assert len(said) == 1
    assert "toolrec (3 of 3 users): 3 final steps topped up from the backbone" in said[0]
    assert "toolrec/last-list (3 of 3 users): 3 final lists padded by retrieval score" in said[0]
    recs = read_jsonl(out / "results.jsonl").records
    for r in recs:
        want = {"topup": 1} if r["method"] == "toolrec" else {"padded": 1}
        assert {k: v for k, v in r["fallbacks"].items() if v} == want
        traj = load_trajectory(out, r["trajectory"])
        assert traj["totals"]["fallbacks"] == r["fallbacks"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["toolrec"]["fallbacks"]["topup"] == 3 and summary["methods"]["toolrec"]["fallbacks"]["users"] == 3
    assert summary["methods"]["toolrec/last-list"]["fallbacks"]["padded"] == 3
    assert fallback_line(summary) == said[0]
    md = write_report([out])[0].read_text()
    assert said[0] in md
    cost = next(line for line in md.splitlines() if line.startswith("| toolrec |") and "topup" in line)
    assert cost.rstrip().endswith("| topup 3 |")


def test_a_run_without_fallbacks_says_nothing_in_the_terminal_and_none_in_the_report(walk, tmp_path):
    summary, folder = evaluate(EvalOptions.of(dataset="walk", methods="toolrec", llm="tiny", users=2, seeds=1,
                                           out=tmp_path / "run"),
                               tool_loader=rule_loader, llm_factory=factory_for(scripted_agent(AGENT_TURNS)))
    assert fallback_line(summary) == "" and summary["methods"]["toolrec"]["fallbacks"]["users"] == 0
    assert "No fallbacks were taken." in write_report([folder])[0].read_text()
