"""The `toolrec-local` command. Thin: parse, call, render. Every command module registers
itself here; heavy imports (torch, vllm) happen inside the commands, so `--help` is instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from toolrec_local import __version__, paths
from toolrec_local.console import err_console
from toolrec_local.errors import ToolrecError

app = typer.Typer(
    name="toolrec-local",
    help="ToolRec (LLM-empowered recommendation through tool learning) on local open-weight models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool):
    if value:
        print(f"toolrec-local {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    home: Optional[Path] = typer.Option(
        None, "--home", envvar="TOOLREC_HOME",
        help="Where datasets, checkpoints and models live (default ~/.cache/toolrec-local).",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    if home is not None:
        paths.set_home(home)


def _register() -> None:
    from toolrec_local.data.commands import app as data_app

    app.add_typer(data_app, name="data")
    # Other command groups register themselves below as they are built.
    for module in (
        "toolrec_local.recsys.commands",
        "toolrec_local.llm.commands",
        "toolrec_local.agent.commands",
        "toolrec_local.eval.commands",
        "toolrec_local.doctor",
    ):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # that part is not built yet
            raise
        mod.register(app)


_register()


def main() -> None:
    try:
        # Without standalone mode click returns the code of typer.Exit instead of exiting.
        rc = app(standalone_mode=False)
    except ToolrecError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
        if exc.hint:
            err_console.print(f"[bold]fix:[/] {exc.hint}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[yellow]aborted[/]")
        sys.exit(1)
    except Exception as exc:
        # Usage errors (missing argument, bad option). Typer vendors click, so the class is
        # recognised by its interface rather than imported.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
