"""The report's "where hits are won and lost" section, from summary.json's `hits` blocks
(eval/hits.py): the decomposition table, the pick-position profile of the LLM ranking calls,
the agent's tool calls per round, and one plot (hits.png: stacked shares per method, one
panel per run)."""

from __future__ import annotations

from pathlib import Path

from toolrec_local.eval.hits import BUCKET_NAMES, CLASSES, KEPT, NEVER, RANKED_OUT, UNKNOWN

CLASS_TITLES = {NEVER: "target never gathered", RANKED_OUT: "gathered but ranked out by the LLM", KEPT: "kept",
                UNKNOWN: "n/a (no trajectory)"}
CLASS_COLORS = {NEVER: "#bdbdbd", RANKED_OUT: "#e6550d", KEPT: "#31a354", UNKNOWN: "#f0f0f0"}
CALL_TITLES = {"rank": "Rank tool", "final": "final step", "list": "ranking call"}

INTRO = """Each user's target, per LLM method: **never gathered** (in no list a tool returned: better
tools, or other tool calls, would be needed), **gathered but ranked out by the LLM** (in the
pool, not in the final top N: a better ranker would be needed; for a `/last-list` variant the
cut of the last list left it out; "not shown" counts the targets
the final ranking's prompt left out to fit the context), or **kept** (a hit at N; "kept at
position": how many at each position of the final list). "Best list rank": the target's rank in
the tool list where it ranked highest, for the users whose target was gathered. Users are the paired (seed, user) pairs of the table above."""

PICKS_INTRO = """Where each LLM ranking call's picks sat among the candidates, in the order its prompt showed
them (1 = the first candidate shown). "Next line": the share of consecutive picks where the
second is the line right after the first in a shown list (copying the prompt, not ranking),
beside what picks at random would give; "longest run": the longest such run of picks per call;
"order kept": calls whose picks are exactly the first candidates in the order shown. n/a: the
trajectories do not record what the calls were shown (a run from before they did)."""


def _rows(summaries: list[tuple[str, dict]]) -> list[tuple[str, str, dict]]:
    return [(label, name, m["hits"]) for label, s in summaries for name, m in s["methods"].items() if m.get("hits")]


def _count(n: int, share: float | None) -> str:
    return f"{n} ({100 * share:.1f}%)" if share is not None else str(n)


def _na(v, fmt: str = "{}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _first(label: str, several: bool) -> list[str]:
    return [label] if several else []


def decomposition_table(summaries: list[tuple[str, dict]]) -> str:
    several = len(summaries) > 1
    head = ["Run"] * several + ["Method", "users", *(CLASS_TITLES[c] for c in CLASSES), "n/a", "kept at position",
                                *(f"best list rank {b}" for b in BUCKET_NAMES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (1 + several) + "---:|" * (len(head) - 1 - several)]
    for label, name, h in _rows(summaries):
        c = h["classes"]
        out = _count(c[RANKED_OUT]["n"], c[RANKED_OUT]["share"])
        if h["ranked_out_unseen"]:
            out += f", {h['ranked_out_unseen']} not shown"
        kept = ", ".join(f"{p}: {n}" for p, n in h["kept_positions"].items()) or "-"
        cells = [*_first(label, several), name, str(h["users"]), _count(c[NEVER]["n"], c[NEVER]["share"]), out,
                 _count(c[KEPT]["n"], c[KEPT]["share"]), str(c[UNKNOWN]["n"]), kept,
                 *(str(h["best_list_rank"][b]) for b in BUCKET_NAMES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def picks_table(summaries: list[tuple[str, dict]]) -> str:
    several = len(summaries) > 1
    head = ["Run"] * several + ["Method", "call", "calls (measured)", *(f"picks at {b}" for b in BUCKET_NAMES),
                                "mean position", "next line (chance)", "longest run mean / max", "order kept"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (2 + several) + "---:|" * (len(head) - 2 - several)]
    for label, name, h in _rows(summaries):
        for kind, r in h["ranking"].items():
            picks = r["picks"]
            shares = [f"{100 * r['positions'][b] / picks:.0f}%" if picks else "n/a" for b in BUCKET_NAMES]
            copy = "n/a" if r["adjacent_share"] is None else f"{100 * r['adjacent_share']:.0f}% ({100 * r['chance']:.0f}%)"
            run = "n/a" if r["longest_run"] is None else f"{r['longest_run']['mean']:.1f} / {r['longest_run']['max']}"
            cells = [*_first(label, several), name, CALL_TITLES[kind], f"{r['calls']} ({r['measured']})", *shares,
                     _na(r["mean_position"], "{:.1f}"), copy, run,
                     "n/a" if r["in_order"] is None else f"{100 * r['in_order']:.0f}%"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _counts(d: dict, sep: str = ": ") -> str:
    return ", ".join(f"{k}{sep}{v}" for k, v in d.items()) or "-"


def tools_table(summaries: list[tuple[str, dict]]) -> str:
    several = len(summaries) > 1
    head = ["Run"] * several + ["Method", "round", "calls", "Retrieval", "Rank", "Finish", "invalid", "attributes",
                                "K", "repeats"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (1 + several) + "---:|" * 6 + "---|---|---:|"]
    rows = [(label, name, h["tool_calls"]) for label, name, h in _rows(summaries) if h.get("tool_calls")]
    if not rows:
        return ""
    for label, name, t in rows:
        for n, r in [*t["rounds"].items(), ("all", t["total"])]:
            tools = r["tools"]
            cells = [*_first(label, several), name, n, str(r["calls"]),
                     *(str(tools.get(x, 0)) for x in ("Retrieval", "Rank", "Finish", "invalid")),
                     _counts(r["attributes"]), _counts(r["k"]), str(r["repeats"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_hits(summaries: list[tuple[str, dict]], path: Path) -> Path | None:
    """Stacked shares of the three classes (and n/a) per LLM method; one panel per run."""
    import numpy as np

    from toolrec_local.eval.report import _plt

    panels = [(label, [(n, m["hits"]) for n, m in s["methods"].items() if m.get("hits")]) for label, s in summaries]
    panels = [(label, rows) for label, rows in panels if rows]
    if not panels:
        return None
    plt = _plt()
    width = max(6.5, 0.9 * max(len(rows) for _, rows in panels) + 2.5) * len(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.4), sharey=True, constrained_layout=True, squeeze=False)
    for ax, (label, rows) in zip(axes[0], panels):
        x = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for c in (*CLASSES, UNKNOWN):
            share = np.array([h["classes"][c]["share"] or 0.0 for _, h in rows])
            ax.bar(x, share, 0.6, bottom=bottom, color=CLASS_COLORS[c], edgecolor="#636363", linewidth=0.5,
                   label=CLASS_TITLES[c])
            for xi, (_, h), b, v in zip(x, rows, bottom, share):
                if v >= 0.06:  # the users' count inside its segment
                    ax.text(xi, b + v / 2, str(h["classes"][c]["n"]), ha="center", va="center", fontsize=8)
            bottom += share
        ax.set_xticks(x, [n for n, _ in rows], rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{label} ({rows[0][1]['users']} users)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0][0].set_ylabel("share of users")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=4 if width >= 10 else 2, fontsize=9, frameon=False)
    fig.suptitle("Where hits are won and lost: the target per user", fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def hits_section(summaries: list[tuple[str, dict]], out: Path) -> list[str]:
    """The report's Markdown lines (and hits.png in `out`); none when no run has an LLM method."""
    if not _rows(summaries):
        return []
    md = ["## Where hits are won and lost", "", INTRO, "", decomposition_table(summaries), ""]
    plot = plot_hits(summaries, Path(out) / "hits.png")
    if plot:
        md += [f"![hits]({plot.name})", ""]
    md += ["### LLM ranking calls: where the picks sat in what they were shown", "", PICKS_INTRO, "",
           picks_table(summaries), ""]
    tools = tools_table(summaries)
    if tools:
        md += ["### The agent's tool calls per round", "",
               "K as the action asked it; repeats: an identical call earlier in the same run.", "", tools, ""]
    return md
