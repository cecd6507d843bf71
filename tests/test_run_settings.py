"""RunSettings: every `eval` option that makes a run's identity goes from its flag into run.json
and back, and a resume under another value is refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fixtures_eval import ScriptedSuite, prepare_walk, rule_loader
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.rundir import AGENT_IDENTITY, LLM_IDENTITY, RunConfig
from toolrec_local.settings import RunSettings, legacy_value, setting_fields

BASE = ["eval", "--dataset", "walk", "--method", "pop,toolrec", "--llm", "tiny", "--users", "3", "--seeds", "1"]
# field -> (flag and value on the command line, the value run.json then holds); every field a
# flag sets is here: a field added to RunSettings without a row fails the coverage test below.
CHANGES = {
    "llm": (["--llm", "tiny-2"], "tiny-2"),
    "backend": (["--backend", "openai"], "openai"),
    "grammar": (["--no-grammar"], False),
    "temperature": (["--temperature", "0.7"], 0.7),
    "finish": (["--finish", "both"], "both"),
    "repeated_lists": (["--repeated-lists", "full"], "full"),
    "rank_by": (["--rank-by", "score"], "score"),
    "rank_shuffles": (["--rank-shuffles", "2"], 2),
    "rank_llm": (["--rank-llm", "tiny-2"], "tiny-2"),
    "top_n": (["--top-n", "5"], 5),
    "history": (["--history", "keep"], "keep"),
    "answer_space": (["--answer-space", "catalogue"], "catalogue"),
    "max_rounds": (["--max-rounds", "3"], 3),
    "demos": (["--demos", "1"], 1),
    "observe_items": (["--observe-items", "5"], 5),
}
NO_EVAL_FLAG = {"part": "eval always tests on the test part", "prompts": "the prompt file's fingerprint, not an option"}


@pytest.fixture
def run_eval(tmp_home, monkeypatch):
    """`toolrec-local eval ARGS` in process, with the walk dataset's rule tools and a scripted suite."""
    from toolrec_local.cli import app
    from toolrec_local.eval import session

    prepare_walk(tmp_home)
    real = session.evaluate
    monkeypatch.setattr(session, "evaluate", lambda opts, **kw: real(
        opts, **kw, tool_loader=rule_loader, llm_factory=lambda names, ds, tools, **_: ScriptedSuite(names, ds)))

    def run(*args: str):
        return CliRunner().invoke(app, list(args))

    return run


def test_every_settings_field_has_a_flag_row():
    assert set(CHANGES) | set(NO_EVAL_FLAG) == set(setting_fields())


def test_each_option_reaches_run_json_and_a_resume_under_another_value_is_refused(run_eval, tmp_path):
    base = tmp_path / "base"
    assert run_eval(*BASE, "--out", str(base)).exit_code == 0
    default = json.loads((base / "run.json").read_text())
    for name, (flag, value) in CHANGES.items():
        out = tmp_path / name
        result = run_eval(*BASE, *flag, "--out", str(out))
        assert result.exit_code == 0, (name, result.output, result.exception)
        recorded = json.loads((out / "run.json").read_text())
        assert recorded[name] == value != default[name], name
        assert {k: v for k, v in recorded.items() if k not in (name, "command", "updated")} == \
            {k: v for k, v in default.items() if k not in (name, "command", "updated")}, name  # that field alone
        again = run_eval(*BASE, "--out", str(out))  # the default value into the same folder
        assert isinstance(again.exception, ToolrecError), name
        assert f"{name}: {value!r} in the folder" in again.exception.message


def test_run_config_reads_back_what_it_wrote():
    settings = RunSettings(llm="m", backend="local", grammar=False, temperature=1.0, finish="last-list",
                           repeated_lists="full", prompts="abc123", top_n=20, history="keep", part="valid",
                           answer_space="catalogue", max_rounds=4, demos=0, observe_items=None)
    cfg = RunConfig(dataset="d", dataset_fingerprint="f", methods=["toolrec/last-list"], seeds=[0], users=5,
                    settings=settings, uses_llm=True)
    back = RunConfig.from_json(json.loads(json.dumps(cfg.to_json())), "run.json")
    assert back == cfg and back.temperature == 1.0 and back.settings == settings
    assert back.to_json()["observe_items"] == "all"  # None: the whole list, not "no agent"
    no_llm = RunConfig.from_json(RunConfig(dataset="d", dataset_fingerprint="f", methods=["pop"], seeds=[0], users=5,
                                           settings=settings, absent=frozenset(LLM_IDENTITY + AGENT_IDENTITY)).to_json(),
                                 "run.json")
    assert no_llm.top_n == 20 and all(no_llm.to_json()[f] is None and getattr(no_llm, f) is None
                                      for f in LLM_IDENTITY + AGENT_IDENTITY)


def test_a_folder_from_before_a_field_reads_as_it_was_made():
    old = {"dataset": "d", "dataset_fingerprint": "f", "methods": ["toolrec"], "seeds": [0], "users": 5,
           "uses_llm": True, "llm": "m", "backend": "vllm"}  # no repeated_lists, no prompts
    cfg = RunConfig.from_json(old, "run.json")
    assert cfg.repeated_lists == legacy_value("repeated_lists") == "full" and cfg.prompts is None
    assert (cfg.max_rounds, cfg.demos, cfg.observe_items, cfg.answer_space, cfg.finish) == (8, 2, 10, "gathered", None)


@pytest.mark.parametrize("field, value, match", [
    ("finish", "last", "unknown --finish"), ("backend", "pigeon", "unknown --backend"),
    ("temperature", 3.0, "--temperature"), ("top_n", 0, "--top-n"), ("history", "drop", "unknown --history"),
    ("repeated_lists", "once", "unknown --repeated-lists"), ("part", "train", "unknown --part"),
    ("answer_space", "all", "unknown --answer-space"), ("max_rounds", 0, "--max-rounds"), ("demos", -1, "--demos"),
    ("observe_items", 0, "--observe-items"),
])
def test_each_setting_is_checked_once_with_its_flag_in_the_message(field, value, match):
    with pytest.raises(ToolrecError, match=match):
        RunSettings(**{field: value})
