"""The live display of `eval`: per method, users done / total, running Recall@10 and NDCG@10
over the users done so far (earlier runs into the folder included), failures, and for LLM
methods what moves while users are in flight: agent rounds and LLM calls done, output tokens/s,
users in flight (and how many the servers admit), and from the servers' /metrics the share of
prompt tokens served by the prefix cache, prompt tokens computed per second and KV-cache use.
The runner refreshes the figures every few seconds, so neither the bar nor the plain lines
ever stand still for long."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from toolrec_local.eval.runner import Tally


class EvalProgress:
    """A live bar per method on a terminal; elsewhere (logs, CI) a plain line per method every
    `log_every_s` seconds and at the end, since a live display only shows up there at exit."""

    def __init__(self, console: Console, refresh_s: float = 0.2, log_every_s: float = 25.0):
        self.console = console
        self.live = console.is_terminal
        self.log_every_s = log_every_s
        self._logged: dict[str, float] = {}
        self.progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("R@10 {task.fields[recall]}  N@10 {task.fields[ndcg]}  {task.fields[llm]}  {task.fields[failed]}"),
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
            "llm": llm_figures(tally),
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
        figures = llm_figures(tally)
        if figures:
            parts.append(figures)
        if tally.failed:
            parts.append(f"{tally.failed} failed")
        self.console.print("  ".join(parts), highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/]", highlight=False, soft_wrap=True)


def llm_figures(tally: Tally) -> str:
    """e.g. "57 rounds 112 calls  out 38.0 tok/s  12/14 in flight  cache 93%  prefill 410 tok/s  KV 61%"."""
    live = tally.live
    if not (live.calls or live.in_flight):
        return ""
    parts = [(f"{live.rounds} rounds " if live.rounds else "") + f"{live.calls} calls",
             f"out {live.tokens_per_s:.1f} tok/s"]
    if live.in_flight or live.limit:
        parts.append(f"{live.in_flight}/{live.limit} in flight" if live.limit else f"{live.in_flight} in flight")
    if live.server is not None and live.server.hit_rate is not None:
        parts.append(f"cache {100 * live.server.hit_rate:.0f}%")
    recent = live.server_recent
    if recent is not None and recent.seconds > 0:
        parts.append(f"prefill {recent.computed_tokens / recent.seconds:.0f} tok/s")
    if live.kv_usage is not None:
        parts.append(f"KV {100 * live.kv_usage:.0f}%")
    return "  ".join(parts)
