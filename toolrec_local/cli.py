"""The `toolrec-local` command. Thin: parse, call, render. Every command module registers
itself here (plain imports: each module is part of the package); heavy imports (torch, vllm) happen inside the commands, so `--help` is instant."""

from __future__ import annotations

import inspect
import re
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
    from toolrec_local import doctor
    from toolrec_local.agent import commands as agent_commands
    from toolrec_local.data.commands import app as data_app
    from toolrec_local.eval import commands as eval_commands
    from toolrec_local.llm import commands as llm_commands
    from toolrec_local.recsys import commands as recsys_commands
    from toolrec_local.tune import commands as tune_commands

    app.add_typer(data_app, name="data")
    for module in (recsys_commands, llm_commands, agent_commands, eval_commands, tune_commands, doctor):
        module.register(app)
    _reflow_help(app)


def reflow(text: str) -> str:
    """Help text as paragraphs the terminal wraps: the lines of a paragraph (docstrings are
    wrapped at ~100 columns in the source) joined, so Rich wraps them once at the terminal's
    width instead of breaking each source line again. A line starting a list item ("- ", "* ",
    "1. ") starts a new line of its paragraph."""
    paragraphs = []
    for block in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            line = line.strip()
            if lines and not re.match(r"([-*]|\d+\.) ", line):
                lines[-1] += " " + line
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(p for p in paragraphs if p)


def _summary(text: str) -> str:
    """The command list's line: the help's first sentence."""
    first = reflow(text).split("\n\n", 1)[0]
    return re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.:;])\s", first, maxsplit=1)[0].rstrip(".:;")


def _reflow_help(typer_app: typer.Typer) -> None:
    """Every command's help reflowed, and one summary line for it in the command lists."""
    for info in typer_app.registered_commands:
        text = info.help or (info.callback.__doc__ if info.callback else None)
        if text:
            info.help = reflow(text)
            info.short_help = info.short_help or _summary(text)
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        text = group.help or sub.info.help
        if isinstance(text, str) and text:
            group.help = reflow(text)
            group.short_help = group.short_help or _summary(text)
        _reflow_help(sub)


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
