"""`toolrec-local tune` on the tiny random model and ML-100K's trained tools: the samples are the
score ranker's own prompts labelled with the validation item; a few steps lower the training
loss; an interrupted run resumes from its last step; the merged model has a card that `serve`
starts and that answers a score ranking."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import yaml

from toolrec_local.errors import ToolrecError
from toolrec_local.tune.train import TuneSettings

FEW = TuneSettings(epochs=3, max_samples=8, batch=4, lr=1e-2, warmup=0, eval_every=1000, held_out=0.1, seed=1)
USERS = 150  # the first 150 users' samples (~100)


class Interrupt(Exception):
    pass


class StopAfter:
    """A progress that interrupts the run after `steps` optimizer steps (a kill between steps)."""

    def __init__(self, steps: int | None = None):
        self.steps, self.seen = steps, 0

    def start(self, total, done):
        self.total, self.first = total, done

    def advance(self, n, loss, rate):
        self.seen += 1
        if self.steps is not None and self.seen >= self.steps:
            raise Interrupt


@pytest.fixture(scope="module")
def tuned(ml100k, ml100k_tools, tiny_model_dir):
    """One tune run of tiny-random, interrupted after 2 of its 6 steps and then resumed."""
    from toolrec_local.tune.run import tune

    logs: list[str] = []
    with pytest.raises(Interrupt):
        tune("tiny-random", "ml-100k", name="tiny-random-ranker-test", users=USERS, settings=FEW, threads=1, fresh=True,
             log=logs.append, progress=StopAfter(2), command="pytest")
    first = list(logs)
    resumed = StopAfter()
    record = tune("tiny-random", "ml-100k", name="tiny-random-ranker-test", users=USERS, settings=FEW, threads=1,
                  log=logs.append, progress=resumed, command="pytest")
    return record, first, logs[len(first):], resumed


@pytest.mark.slow
def test_samples_are_the_score_rankers_prompts_labelled_with_the_validation_item(ml100k, ml100k_tools):
    from transformers import AutoTokenizer

    from toolrec_local.llm.registry import load_card
    from toolrec_local.tune.samples import agent_context, build_samples

    tokenizer = AutoTokenizer.from_pretrained(load_card("tiny-random").require_weights())
    users = ml100k.eval_users[:40]
    samples, missed = build_samples(agent_context(ml100k, ml100k_tools, tokenizer, 2048), users)
    assert samples and len(samples) + missed == 2 * len(users)
    assert {s.kind for s in samples} == {"backbone", "final"}
    for s in samples:
        target = ml100k.item_ids[ml100k.split(s.user, "valid")[1]]
        prompt = s.messages[-1]["content"]
        line = re.search(rf"^{re.escape(s.answer)}\. (\S+?),", prompt, re.M)
        assert line and line.group(1) == target  # the answer's label names the validation item
        labelled = re.findall(r"^([A-Za-z])\. ", prompt, re.M)
        assert labelled == s.labels and s.answer in s.labels


@pytest.mark.slow
def test_tune_lowers_the_training_loss_and_resumes_after_an_interruption(tuned):
    record, first, second, resumed = tuned
    steps_per_epoch = 2  # 8 samples, 4 per step
    assert any("resumed at epoch 1, sample 8 of 8 (optimizer step 2 of 6)" in line for line in second)
    assert resumed.first == 8 and resumed.seen == 4  # only the 4 steps left ran again
    assert len(record["train_losses"]) == 3 * steps_per_epoch == record["state"]["step"]
    before, after = record["state"]["train_probe"]  # the same 8 training samples, before and after
    assert before["samples"] == after["samples"] == 8
    assert after["loss"] < before["loss"] - 0.2, (before, after)
    base, *after = record["state"]["evals"]
    assert base["when"] == "base model" and after and record["state"]["best"] in after


@pytest.mark.slow
def test_tuned_model_has_a_card_and_safetensors_weights(tuned):
    from toolrec_local.llm.registry import list_cards, load_card

    record = tuned[0]
    card = load_card("tiny-random-ranker-test")
    assert card.source == "tuned" and card.built_like == "tiny-random"
    assert card.vllm_args == load_card("tiny-random").vllm_args
    assert "tiny-random-ranker-test" in {c.name for c in list_cards()}
    folder = card.require_weights()
    assert str(folder) == record["model"]
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert json.loads((folder / "toolrec_source.json").read_text())["base"] == "tiny-random"
    assert yaml.safe_load(open(record["card"]))["notes"].endswith("pytest")


@pytest.mark.slow
def test_tune_refuses_other_settings_in_the_same_folder_and_package_card_names(tuned):
    from dataclasses import replace

    from toolrec_local.tune.run import tune

    with pytest.raises(ToolrecError, match="other settings"):
        tune("tiny-random", "ml-100k", name="tiny-random-ranker-test", users=USERS, settings=replace(FEW, lr=1e-3))
    with pytest.raises(ToolrecError, match="a card the package ships"):
        tune("tiny-random", "ml-100k", name="smollm2-135m")


@pytest.mark.slow
@pytest.mark.vllm
def test_serve_starts_the_tuned_model_and_it_answers_a_score_ranking(tuned, ml100k, ml100k_tools, session_home):
    from fixtures_vllm import _require_vllm

    from toolrec_local.agent.baselines import llm_rank, top_candidates
    from toolrec_local.agent.context import AgentConfig, AgentContext
    from toolrec_local.llm.backends.vllm import VLLMBackend
    from toolrec_local.llm.server import start_server

    _require_vllm()
    user = int(ml100k.eval_users[5])
    srv = start_server("tiny-random-ranker-test", structured_backend="xgrammar", timeout=480,
                       log_path=session_home / "logs" / "vllm-tuned.log", die_with_parent=True)
    try:
        backend = VLLMBackend(srv.base_url, srv.model)
        ctx = AgentContext(ml100k, ml100k_tools, backend, AgentConfig(rank_by="score"))
        lists = top_candidates(ml100k_tools, user, "test")

        async def go():
            try:
                return await llm_rank(ctx, user, lists, 30)
            finally:
                await backend.aclose()

        items, rnd = asyncio.run(go())
    finally:
        srv.stop()
    assert srv.model == "tiny-random-ranker-test"
    assert rnd.usage.calls == 1 and sorted(items) == sorted(lists[0].items) and rnd.labelled == [lists[0].items]


def test_tune_reads_the_base_weights_from_model_path_and_names_it_when_absent(tmp_home, tmp_path):
    """The missing-weights fix names --model-path, and tune takes it: an absent folder is one
    clear error about that folder (before any dataset is read), exit 2."""
    import os
    import subprocess
    import sys

    missing = tmp_path / "no-such-weights"
    env = dict(os.environ, TOOLREC_HOME=str(tmp_home), COLUMNS="250")
    p = subprocess.run([sys.executable, "-m", "toolrec_local", "tune", "--llm", "smollm2-135m", "--dataset", "ml-100k"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "--model-path" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "toolrec_local", "tune", "--llm", "smollm2-135m", "--dataset", "ml-100k",
                        "--model-path", str(missing)], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and str(missing) in p.stderr.replace("\n", "") and "Traceback" not in p.stderr, p.stderr
