"""RunSettings: every `eval` option that makes a run's identity goes from its flag into run.json
and back, and a resume under another value is refused (or, for --finish, allowed)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fixtures_eval import ScriptedSuite, prepare_walk, rule_loader
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.rundir import LLM_IDENTITY, RunConfig
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
    "top_n": (["--top-n", "5"], 5),
    "history": (["--history", "keep"], "keep"),
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
        if name == "finish":  # not identity: the record names say which final step each row used
            assert again.exit_code == 0, again.exception
            continue
        assert isinstance(again.exception, ToolrecError), name
        assert f"{name}: {value!r} in the folder" in again.exception.message


def test_run_config_reads_back_what_it_wrote():
    settings = RunSettings(llm="m", backend="local", grammar=False, temperature=1.0, finish="last-list",
                           repeated_lists="full", prompts="abc123", top_n=20, history="keep", part="valid")
    cfg = RunConfig(dataset="d", dataset_fingerprint="f", methods=["toolrec/last-list"], seeds=[0], users=5,
                    settings=settings, uses_llm=True)
    back = RunConfig.from_json(json.loads(json.dumps(cfg.to_json())), "run.json")
    assert back == cfg and back.temperature == 1.0 and back.settings == settings
    no_llm = RunConfig.from_json(RunConfig(dataset="d", dataset_fingerprint="f", methods=["pop"], seeds=[0], users=5,
                                           settings=settings).to_json(), "run.json")
    assert no_llm.top_n == 20 and all(no_llm.to_json()[f] is None for f in LLM_IDENTITY)


def test_a_folder_from_before_a_field_reads_as_it_was_made():
    old = {"dataset": "d", "dataset_fingerprint": "f", "methods": ["toolrec"], "seeds": [0], "users": 5,
           "uses_llm": True, "llm": "m", "backend": "vllm"}  # no repeated_lists, no prompts
    cfg = RunConfig.from_json(old, "run.json")
    assert cfg.repeated_lists == legacy_value("repeated_lists") == "full" and cfg.prompts is None


@pytest.mark.parametrize("field, value, match", [
    ("finish", "last", "unknown --finish"), ("backend", "pigeon", "unknown --backend"),
    ("temperature", 3.0, "--temperature"), ("top_n", 0, "--top-n"), ("history", "drop", "unknown --history"),
    ("repeated_lists", "once", "unknown --repeated-lists"), ("part", "train", "unknown --part"),
])
def test_each_setting_is_checked_once_with_its_flag_in_the_message(field, value, match):
    with pytest.raises(ToolrecError, match=match):
        RunSettings(**{field: value})
