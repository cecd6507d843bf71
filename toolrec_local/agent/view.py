"""A trajectory as a person wants to read it: one Rich panel per round (thought, action, the
items it brought with names, the target highlighted), then the final top-N."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from toolrec_local.agent.trajectory import Round, Trajectory


def item_table(ds, items: list[int], target: int, limit: int | None = None) -> Table:
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("#", justify="right", style="dim")
    t.add_column("id", justify="right")
    t.add_column(ds.domain[:-1] if ds.domain.endswith("s") else ds.domain)
    t.add_column("year", style="dim")
    shown = items if limit is None else items[:limit]
    for pos, i in enumerate(shown, 1):
        style = "bold black on green" if i == target else ""
        t.add_row(str(pos), ds.item_ids[i], ds.item_names[i], ds.item_years[i], style=style)
    if limit is not None and len(items) > limit:
        hit = f" (target at #{items.index(target) + 1})" if target in items[limit:] else ""
        t.add_row("", "", Text(f"... {len(items) - limit} more{hit}", style="dim"), "")
    return t


def round_panel(ds, r: Round, target: int, limit: int, title: str | None = None) -> Panel:
    parts = [Text.assemble(("Thought: ", "bold"), r.thought or "-")] if r.n else []  # n=0: the final step, no turn
    parts.append(Text.assemble(("Action: ", "bold"), (r.action, "cyan")))
    if r.note:
        parts.append(Text(r.note, style="yellow"))
    if r.items:
        parts.append(item_table(ds, r.items, target, limit))
    cost = (f"{r.usage.calls} LLM call(s), {r.usage.tokens_in} tokens in / {r.usage.tokens_out} out, "
            f"{r.usage.latency_s:.2f} s LLM, {r.overhead_s * 1000:.1f} ms other")
    counters = [f"{name} {v}" for name, v in (("retries", r.retries), ("repairs", r.repairs),
                                              ("grammar violations", r.grammar_violations),
                                              ("invalid items", r.invalid_items)) if v]
    parts.append(Text(cost + ("; " + ", ".join(counters) if counters else ""), style="dim"))
    return Panel(Group(*parts), title=title or f"Round {r.n}", title_align="left")


def show(console, ds, traj: Trajectory, limit: int = 10) -> None:
    target = traj.target_item
    recent = traj.history_items[-5:]
    head = Text.assemble(
        ("User ", "bold"), traj.user, f"  ({len(traj.history_items)} items in history; last: ",
        "; ".join(ds.item_names[i] for i in recent), ")\n",
        ("Target ", "bold"), (f"{ds.item_ids[target]}, {ds.item_names[target]}", "green"),
        f"   backend {traj.backend}, grammar {'on' if traj.grammar else 'off'}",
    )
    console.print(Panel(head, title="ToolRec", title_align="left"))
    for r in traj.rounds:
        console.print(round_panel(ds, r, target, limit))
    if traj.final_step is not None:  # the final step: an LLM call like any other (none for last-list)
        how = "the LLM ranks every gathered list" if traj.finish_mode == "llm" else "the last list (no LLM call)"
        console.print(round_panel(ds, traj.final_step, target, limit, title=f"Final step: {how}"))
    hit = traj.final_items.index(target) + 1 if target in traj.final_items else None
    verdict = Text(f"target at #{hit}", style="bold green") if hit else Text("target not in the list", style="dim")
    ended = "Finish" if traj.finished_by == "finish" else f"the {traj.finished_by}"
    note = Text(f"ended by {ended}", style="dim")
    if traj.finish_mode == "llm" and traj.last_list_items:
        same = "the same" if traj.last_list_items == traj.final_items else "different"
        note.append(f"; the last-list ablation's answer would be {same}")
    console.print(Panel(Group(item_table(ds, traj.final_items, target), note, verdict),
                        title=f"Top {len(traj.final_items)}", title_align="left"))
    totals = traj.totals()
    console.print(Text(
        f"{totals['rounds']} rounds, {totals['llm_calls']} LLM calls, {totals['tokens_in']} tokens in, "
        f"{totals['tokens_out']} out, {totals['latency_s']:.2f} s LLM; retries {totals['retries']}, repairs "
        f"{totals['repairs']}, grammar violations {totals['grammar_violations']}", style="dim"))
    taken = ", ".join(f"{name} {n}" for name, n in totals["fallbacks"].items() if n)
    if taken:
        console.print(Text(f"fallbacks: {taken}", style="yellow"))
