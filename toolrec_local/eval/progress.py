"""The live display of `eval`: per method, users done / total, running Recall@10 and NDCG@10
over the users done so far (earlier runs into the folder included), LLM output tokens/s, and failures."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from toolrec_local.eval.runner import Tally


class EvalProgress:
    """A live bar per method on a terminal; elsewhere (logs, CI) a plain line per method every
    `log_every_s` seconds and at the end, since a live display only shows up there at exit."""

    def __init__(self, console: Console, refresh_s: float = 0.2, log_every_s: float = 30.0):
        self.console = console
        self.live = console.is_terminal
        self.log_every_s = log_every_s
        self._logged: dict[str, float] = {}
        self.progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("R@10 {task.fields[recall]}  N@10 {task.fields[ndcg]}  {task.fields[tps]}  {task.fields[failed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not self.live,
        )
        self.tasks: dict[str, int] = {}
        self.refresh_s = refresh_s
        self._last: dict[str, float] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        for name in self.tasks:
            self._last.pop(name, None)
        return self.progress.__exit__(*exc)

    def update(self, method: str, tally: Tally) -> None:
        if not self.live:
            self._log(method, tally)
            return
        now = time.monotonic()
        if method in self.tasks and now - self._last.get(method, 0) < self.refresh_s and tally.done + tally.failed < tally.total:
            return  # a batch of thousands of users would otherwise redraw thousands of times
        self._last[method] = now
        fields = {
            "recall": f"{tally.recall10:.3f}" if tally.scored else "  -  ",
            "ndcg": f"{tally.ndcg:.4f}" if tally.scored else "  -   ",
            "tps": f"{tally.tokens_per_s:7.1f} tok/s" if tally.tokens_out else "",
            "failed": f"[red]{tally.failed} failed[/]" if tally.failed else "",
        }
        if method not in self.tasks:
            self.tasks[method] = self.progress.add_task(method, total=tally.total, completed=tally.done, **fields)
        else:
            self.progress.update(self.tasks[method], completed=tally.done, **fields)

    def _log(self, method: str, tally: Tally) -> None:
        now = time.monotonic()
        finished = tally.done + tally.failed >= tally.total
        last = self._logged.get(method)
        if last is not None and not finished and now - last < self.log_every_s:
            return
        if last == float("inf"):
            return  # its final line is out
        self._logged[method] = float("inf") if finished else now
        parts = [f"{method}: {tally.done}/{tally.total} users"]
        if tally.scored:
            parts.append(f"R@10 {tally.recall10:.3f} N@10 {tally.ndcg:.4f}")
        if tally.tokens_out:
            parts.append(f"{tally.tokens_per_s:.1f} tok/s")
        if tally.failed:
            parts.append(f"{tally.failed} failed")
        self.console.print("  ".join(parts), highlight=False, soft_wrap=True)
