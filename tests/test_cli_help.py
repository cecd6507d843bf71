"""Every command's --help reads at 80 columns: one summary line per command in the lists, and
description paragraphs that Rich wraps once (no line broken where the source docstring was)."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from toolrec_local.cli import app, reflow

BOX = re.compile(r"^\s*[│╭╰]")


def command_paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = [()]

    def walk(cmd, prefix: tuple[str, ...]) -> None:  # a click command or group
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.append(prefix + (name,))
            walk(sub, prefix + (name,))

    walk(root, ())
    return paths


def render(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, (path, result.output)
    return result.output


def fragments(text: str) -> list[str]:
    """Lines outside the option boxes that are shorter than 30 characters and yet not the last
    line of their paragraph: what a second wrap of a hard-wrapped docstring leaves."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    out = []
    for here, after in zip(lines, lines[1:]):
        if BOX.match(here) or BOX.match(after) or not here.strip() or not after.strip():
            continue
        if len(here.strip()) < 30 and not here.strip().startswith(("Usage:", "-", "*")):
            out.append(here)
    return out


def test_help_at_80_columns_has_no_fragments_and_one_line_summaries():
    paths = command_paths()
    assert len(paths) > 10  # the groups and their commands were found
    for path in paths:
        text = render(path)
        assert max(len(ln) for ln in text.splitlines()) <= 80, path
        assert not fragments(text), (path, fragments(text))
        # in a command list, each command's summary fits one or two lines of the box
        rows = command_rows(text)
        starts = [i for i, ln in enumerate(rows) if re.match(r"^│ [a-z0-9-]+ {2,}\S", ln)]
        assert len(starts) == len(rows and starts)
        for a, b in zip(starts, starts[1:] + [len(rows)]):
            assert b - a <= 2, (path, rows[a:b])


def command_rows(text: str) -> list[str]:
    """The lines inside the "Commands" box."""
    lines = text.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.startswith("╭─ Commands"))
    except StopIteration:
        return []
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("╰"))
    return lines[start + 1:end]


def test_reflow_joins_paragraph_lines_and_keeps_list_items():
    text = """First line of a paragraph
    that goes on.

    - an item
      continued
    - another item"""
    assert reflow(text) == "First line of a paragraph that goes on.\n\n- an item continued\n- another item"


def test_detector_finds_a_hard_wrapped_paragraph():
    """The check can fail: a source line of ~100 columns wrapped again at 80 leaves a short
    piece before the next source line."""
    rendered = "\n".join(["x" * 78, "y" * 20, "z" * 78, "w" * 40, ""])
    assert fragments(rendered) == ["y" * 20]
    assert not fragments("\n".join(["x" * 78, "y" * 60, "", "short last line", ""]))
