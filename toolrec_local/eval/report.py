"""`report`: a Markdown report and PNG plots from one or more run folders.

* Table-2-style table per run (mean ± std over seeds, best per column in bold, ToolRec's
  relative improvement over the best baseline as the last row), titled with its protocol
  (`--history`) and the users it compares: the (seed, user) pairs every method finished. When
  a method finished fewer, the rows are over those pairs and each method's own figures follow.
  The Improvement row carries the paired difference's 95% CI and p-value; a table of paired
  differences follows (each method vs its backbone and vs the best other method: pairs, mean
  difference of NDCG@10 and Recall@10, 95% CI, p; eval/stats.py). Then LLM cost and
  termination rounds.
* metrics-<run>.png: Recall and NDCG @5/@10/@20 per method with std error bars; a dashed line
  separates the methods without an LLM from those with one (as the paper's Figure 4).
* rounds-<run>.png: termination rounds of the agent, all users vs hits (Figure 5).
* hits.png: where each LLM method's hits are won and lost (eval/hits_report.py).
* compare.png, with several runs (e.g. one per LLM): Recall@10 and NDCG@10 side by side (Figure 8).
"""

from __future__ import annotations

import re
from pathlib import Path

from rich import box
from rich.table import Table

from toolrec_local.errors import ToolrecError
from toolrec_local.eval.catalog import TABLE, needs_llm
from toolrec_local.eval.hits_report import hits_section
from toolrec_local.settings import HISTORY_PROTOCOLS
from toolrec_local.eval.rundir import RunView, load_runs
from toolrec_local.eval.stats import DESCRIPTION, TOO_FEW
from toolrec_local.eval.summary import summarize

COLUMNS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10", "recall@20", "ndcg@20")
AGENT_METHODS = tuple(m.name for m in TABLE if m.kind == "agent")
HISTORY_TITLES = {"exclude": "history excluded", "keep": "history kept"}
SPACE_TITLES = {"gathered": "gathered answers", "catalogue": "catalogue answers"}


def _fmt(metric: str, v: float) -> str:
    return f"{v:.3f}" if metric.startswith("recall") else f"{v:.4f}"


def _best(summary: dict, metric: str) -> float | None:
    vals = [summary["methods"][n][metric]["mean"] for n in summary["paired"]["methods"]]
    return max(vals) if vals else None


def paired_note(summary: dict) -> str:
    """Which users the rows compare, in words."""
    paired = summary["paired"]
    if not paired["methods"]:
        return "no method finished a user"
    if paired["partial"]:
        return (f"paired: rows compare the {paired['users']} (seed, user) pairs every method finished, "
                "not each method's own users")
    return f"every method on the same {paired['users']} (seed, user) pairs"


def summary_table(summary: dict) -> Table:
    """The Rich version of the table, for the terminal (80 columns): three decimals, ± std at
    @10 only, a users column only when some method is incomplete or the rows are paired on
    fewer users than a method finished. The report has it all."""
    seeds = len(summary["seeds"])
    paired = summary["paired"]
    compared = set(paired["methods"])
    counts = {m["users"]["ok"] for m in summary["methods"].values()}
    incomplete = any(not m["complete"] for m in summary["methods"].values()) or paired["partial"]
    users = f"{summary['users']} users × {seeds} seed{'s' if seeds > 1 else ''}"
    if not incomplete and len(counts) == 1:
        users += f" = {counts.pop()} per method"
    space = summary.get("answer_space")
    space = f" · {SPACE_TITLES[space]}" + (" (the authors' condition)" if authors_condition(summary) else "") if space else ""
    title = (f"{summary['dataset']} · {summary['llm'] or 'no LLM'} · {HISTORY_TITLES[summary['history']]}{space} · {users}"
             + (", mean ± std over seeds" if seeds > 1 else ""))
    if paired["partial"]:
        title += f"\n[bold yellow]{paired_note(summary)}[/]"
    caption = ("users: paired/finished; each method over all the users it finished: summary.json, all_users"
               if paired["partial"] else None)
    gain_ci = improvement_lines(summary)
    if gain_ci:
        caption = "\n".join(([caption] if caption else []) + gain_ci)
    t = Table(title=title, caption=caption, padding=(0, 1))
    t.add_column("method")
    for c in COLUMNS:
        t.add_column(c.replace("recall", "R").replace("ndcg", "N"), justify="right")
    if incomplete:
        t.add_column("users", justify="right")
    for name, m in summary["methods"].items():
        cells = []
        for c in COLUMNS:
            cell = f"{m[c]['mean']:.3f}" + (f"±{m[c]['std']:.3f}" if seeds > 1 and c.endswith("@10") else "")
            cells.append("-" if name not in compared else f"[bold]{cell}[/]" if m[c]["mean"] == _best(summary, c) else cell)
        if incomplete:
            if paired["partial"]:  # narrow: the failures are named under the table
                cells.append(f"{paired['users'] if name in compared else 0}/{m['users']['ok']}")
            else:
                cells.append(f"{m['users']['ok']}" + (f" [red]({m['users']['failed']} failed)[/]" if m["users"]["failed"] else ""))
        t.add_row(name, *cells)
    imp = summary.get("improvement")
    if imp:
        t.add_row("[italic]gain[/]", *[_pct(imp[c]["relative"], 1) for c in COLUMNS], *([""] if incomplete else []))
        t.add_row("[italic]p[/]", *[fmt_p((imp[c].get("paired") or {}).get("p")) if imp[c]["over"] else "" for c in COLUMNS],
                  *([""] if incomplete else []))
    return t


def improvement_lines(summary: dict) -> list[str]:
    """The gain's paired differences at @10, one line each (the terminal table's caption)."""
    imp = summary.get("improvement") or {}
    lines = []
    for c in ("ndcg@10", "recall@10"):
        if c in imp and imp[c]["over"] and imp[c].get("paired"):
            lines.append(f"gain {_short(c)} vs {imp[c]['over']}: Δ {fmt_difference(imp[c]['paired'])}")
    return lines


def fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(ci: list[float] | None, digits: int = 4) -> str:
    return "n/a" if ci is None else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def fmt_difference(d: dict | None, digits: int = 4) -> str:
    """A paired difference in one phrase: mean, 95% CI, p (or why there is none)."""
    if d is None or d.get("ci") is None:
        return TOO_FEW
    return f"{d['diff']:+.{digits}f}, 95% CI {fmt_ci(d['ci'], digits)}, p {fmt_p(d['p'])}"


def comparison_rows(summary: dict) -> list[tuple[str, str, dict]]:
    """(method, reference label, block) per comparison, the backbone's first; a best other that
    is the backbone is one row."""
    rows = []
    for name, m in summary["methods"].items():
        c = m.get("comparisons") or {}
        back, best = c.get("backbone"), c.get("best_other")
        if back is not None:
            same = best is not None and best["reference"] == back["reference"]
            rows.append((name, f"{back['reference']} (backbone{', best other' if same else ''})", back))
        if best is not None and not (back is not None and best["reference"] == back["reference"]):
            rows.append((name, f"{best['reference']} (best other)", best))
    return rows


def _short(metric: str) -> str:
    return metric.replace("recall", "R").replace("ndcg", "N")


def _cells(block: dict, metric: str, digits: int) -> list[str]:
    d = block[metric]
    if d.get("ci") is None:
        return [TOO_FEW, "", ""]
    return [f"{d['diff']:+.{digits}f}", fmt_ci(d["ci"], digits), fmt_p(d["p"])]


def comparison_table(summary: dict) -> Table | None:
    """Paired differences, for the terminal (80 columns: three decimals, a row per metric)."""
    rows = comparison_rows(summary)
    if not rows:
        return None
    t = Table(title="paired differences: method - reference, 95% bootstrap CI, p",
              caption="vs: * the backbone, else the best other by NDCG@10; p: permutation test",
              box=box.SIMPLE_HEAD, padding=(0, 1))
    for col, justify in (("method", "left"), ("vs", "left"), ("n", "right"), ("", "left"), ("Δ", "right"),
                         ("95% CI", "right"), ("p", "right")):
        t.add_column(col, justify=justify)
    for name, ref, block in rows:
        vs = ref.replace(" (backbone, best other)", "*").replace(" (backbone)", "*").replace(" (best other)", "")
        for i, metric in enumerate(("ndcg@10", "recall@10")):
            head = [name, vs, str(block["pairs"])] if i == 0 else ["", "", ""]
            t.add_row(*head, _short(metric), *_cells(block, metric, 3), end_section=i == 1)
    return t


def authors_condition(summary: dict) -> bool:
    """`--history keep --answer-space catalogue`: the tools' lists hold history items and any
    catalogue item may be answered, as in the authors' code."""
    return summary.get("answer_space") == "catalogue" and summary["history"] == "keep"


def fallback_counts(m: dict) -> dict[str, int]:
    """A method's non-zero fallback counts (summary.json "fallbacks", without "users")."""
    return {k: v for k, v in (m.get("fallbacks") or {}).items() if k != "users" and v}


def fallback_line(summary: dict) -> str:
    """One line naming every fallback a run took, per method; "" when none was taken."""
    from toolrec_local.agent.trajectory import FALLBACKS

    parts = []
    for name, m in summary["methods"].items():
        counts = fallback_counts(m)
        if counts:
            what = ", ".join(f"{n} {FALLBACKS.get(k, k)}" for k, n in counts.items())
            parts.append(f"{name} ({m['fallbacks']['users']} of {m['users']['ok']} users): {what}")
    return ("Fallbacks taken (counted per user in results.jsonl, summed in summary.json): " + "; ".join(parts)
            if parts else "")


def _pct(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{100 * v:+.{digits}f}%"


# ---- Markdown -------------------------------------------------------------
def table_title(summary: dict, label: str) -> str:
    h = summary["history"]
    space = summary.get("answer_space")
    condition = "" if not space else (
        "; the agent answers from the whole catalogue outside the history, its tools' lists holding history items "
        "(`--history keep --answer-space catalogue`: the authors' condition)" if authors_condition(summary) else
        f"; the agent answers {'from the whole catalogue outside the history' if space == 'catalogue' else 'only items its tools gathered'}"
        f" (`--answer-space {space}`)")
    return f"**{label}: full ranking over {HISTORY_PROTOCOLS[h]}, `--history {h}`{condition}; {paired_note(summary)}.**"


def markdown_table(summary: dict) -> str:
    paired = summary["paired"]
    compared = set(paired["methods"])
    head = "| Method | " + " | ".join(c.replace("recall", "Recall").replace("ndcg", "NDCG") for c in COLUMNS) + " | users |"
    lines = [head, "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, m in summary["methods"].items():
        cells = []
        for c in COLUMNS:
            cell = f"{_fmt(c, m[c]['mean'])} ± {_fmt(c, m[c]['std'])}"
            cells.append("-" if name not in compared else f"**{cell}**" if m[c]["mean"] == _best(summary, c) else cell)
        users = str(m["users"]["ok"])
        if paired["partial"]:
            users = f"{paired['users'] if name in compared else 0} paired of {m['users']['ok']} finished"
        if not m["complete"]:
            expected = m["users"]["expected"]
            users += f" † ({m['users']['failed']} failed" + (f", {expected} expected" if expected else "") + \
                (", shards missing)" if summary.get("missing_shards") else ")")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {users} |")
    imp = summary.get("improvement")
    if imp:
        over = sorted({imp[c]["over"] for c in COLUMNS if imp[c]["over"]})
        lines.append("| Improvement (toolrec vs best of " + ", ".join(over) + ") | "
                     + " | ".join(_improvement_cell(imp[c]) for c in COLUMNS) + " | |")
    return "\n".join(lines)


def _improvement_cell(entry: dict) -> str:
    """The relative gain, then the paired difference behind it (Δ, 95% CI, p)."""
    cell = _pct(entry["relative"])
    if entry["over"] and "paired" in entry:
        d = entry["paired"]
        cell += f" (Δ {d['diff']:+.4f} {fmt_ci(d['ci'])}, p {fmt_p(d['p'])})" if d.get("ci") is not None else f" ({TOO_FEW})"
    return cell


def markdown_comparisons(summary: dict) -> str:
    rows = comparison_rows(summary)
    if not rows:
        return ""
    lines = ["| Method | vs | pairs | ΔNDCG@10 | 95% CI | p | ΔRecall@10 | 95% CI | p |", "|---|---|" + "---:|" * 7]
    for name, ref, block in rows:
        lines.append(f"| {name} | {ref} | {block['pairs']} | " + " | ".join(_cells(block, "ndcg@10", 4) + _cells(block, "recall@10", 4)) + " |")
    return "\n".join(lines)


def markdown_own(summary: dict) -> str:
    """Each method over all the users it finished: only when that differs from the paired rows."""
    if not summary["paired"]["partial"]:
        return ""
    lines = ["| Method | " + " | ".join(c.replace("recall", "Recall").replace("ndcg", "NDCG") for c in COLUMNS) + " | users |",
             "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, m in summary["methods"].items():
        own = m["all_users"]
        cells = [f"{_fmt(c, own[c]['mean'])} ± {_fmt(c, own[c]['std'])}" if m["users"]["ok"] else "-" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['users']['ok']} |")
    return "\n".join(lines)


def markdown_llm(summary: dict) -> str:
    rows = [(n, m["llm"]) for n, m in summary["methods"].items() if "llm" in m]
    if not rows:
        return ""
    lines = ["| Method | LLM calls / user | tokens in / user | tokens out / user | LLM latency s / user | wall s / user | out tok / LLM s | outside LLM | retries | repairs | grammar violations | fallbacks |",
             "|---|" + "---:|" * 10 + "---|"]
    for n, l in rows:
        share = "-" if l["share_outside_llm"] is None else f"{100 * l['share_outside_llm']:.1f}%"
        tps = "-" if l["tokens_out_per_llm_s"] is None else f"{l['tokens_out_per_llm_s']:.1f}"
        fallbacks = ", ".join(f"{k} {v}" for k, v in fallback_counts(summary["methods"][n]).items()) or "0"
        lines.append(f"| {n} | {l['llm_calls_per_user']:.2f} | {l['tokens_in_per_user']:.0f} | {l['tokens_out_per_user']:.0f} | "
                     f"{l['latency_s_per_user']:.2f} | {l['wall_s_per_user']:.2f} | {tps} | {share} | {l['retries']} | {l['repairs']} | {l['grammar_violations']} | {fallbacks} |")
    return "\n".join(lines)


def markdown_rounds(summary: dict) -> str:
    rows = [(n, m["rounds"]) for n, m in summary["methods"].items() if "rounds" in m and n in AGENT_METHODS]
    if not rows:
        return ""
    top = max(int(k) for _, r in rows for k in r["all"])
    rounds = range(1, max(top, 1) + 1)
    lines = ["| Method | users | " + " | ".join(f"{k}" for k in rounds) + " | mean |", "|---|---|" + "---:|" * (len(rounds) + 1)]
    for n, r in rows:
        lines.append(f"| {n} | all | " + " | ".join(str(r["all"].get(str(k), 0)) for k in rounds) + f" | {r['mean']:.2f} |")
        lines.append(f"| {n} | hits | " + " | ".join(str(r["hits"].get(str(k), 0)) for k in rounds) + " | |")
    return "\n".join(lines)


def markdown_compare(summaries: list[tuple[str, dict]]) -> str:
    names = list(dict.fromkeys(n for _, s in summaries for n in s["methods"]))
    head = "| Method | " + " | ".join(f"{label} R@10 | {label} N@10" for label, _ in summaries) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(summaries)]
    for n in names:
        cells = []
        for _, s in summaries:
            m = s["methods"].get(n)
            cells += ([f"{m['recall@10']['mean']:.3f} ± {m['recall@10']['std']:.3f}", f"{m['ndcg@10']['mean']:.4f} ± {m['ndcg@10']['std']:.4f}"]
                      if m else ["-", "-"])
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    pairs = [cell for _, s in summaries for cell in (str(s["paired"]["users"]), "")]
    lines.append("| (seed, user) pairs compared | " + " | ".join(pairs) + " |")
    return "\n".join(lines)


# ---- plots ----------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(summary: dict, path: Path, title: str) -> Path:
    import numpy as np

    plt = _plt()
    names = list(summary["paired"]["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.1 * len(names) + 3), 4.2), constrained_layout=True)
    x = np.arange(len(names))
    width = 0.26
    colors = ("#9ecae1", "#3182bd", "#08519c")
    for ax, kind in zip(axes, ("recall", "ndcg")):
        for j, n in enumerate((5, 10, 20)):
            key = f"{kind}@{n}"
            means = [summary["methods"][m][key]["mean"] for m in names]
            stds = [summary["methods"][m][key]["std"] for m in names]
            ax.bar(x + (j - 1) * width, means, width, yerr=stds, capsize=2, label=f"@{n}", color=colors[j])
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title("Recall" if kind == "recall" else "NDCG")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        llm_pos = [i for i, m in enumerate(names) if needs_llm(m)]
        if llm_pos and llm_pos[0] > 0:
            ax.axvline(llm_pos[0] - 0.5, color="grey", linestyle="--", linewidth=1)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    seeds = len(summary["seeds"])
    paired = f", paired on {summary['paired']['users']} users" if summary["paired"]["partial"] else ""
    fig.suptitle(f"{title}  (mean ± std over {seeds} seed{'s' if seeds > 1 else ''}{paired})", fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rounds(summary: dict, path: Path, title: str) -> Path | None:
    import numpy as np

    rows = [(n, m["rounds"]) for n, m in summary["methods"].items() if "rounds" in m and n in AGENT_METHODS]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(5.2 * len(rows), 3.8), constrained_layout=True, squeeze=False)
    for ax, (name, r) in zip(axes[0], rows):
        top = max(8, max(int(k) for k in r["all"]))
        ks = np.arange(1, top + 1)
        n_all = sum(r["all"].values())
        n_hit = sum(r["hits"].values())
        all_share = [r["all"].get(str(k), 0) / max(1, n_all) for k in ks]
        hit_share = [r["hits"].get(str(k), 0) / max(1, n_hit) for k in ks]
        ax.bar(ks - 0.2, all_share, 0.4, label=f"all users (n={n_all})", color="#3182bd")
        ax.bar(ks + 0.2, hit_share, 0.4, label=f"hits (n={n_hit})", color="#e6550d")
        ax.set_xticks(ks)
        ax.set_xlabel("termination round")
        ax.set_ylabel("share")
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: termination rounds", fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_compare(summaries: list[tuple[str, dict]], path: Path) -> Path:
    import numpy as np

    plt = _plt()
    names = list(dict.fromkeys(n for _, s in summaries for n in s["methods"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(names) * max(1, len(summaries) / 2) + 3), 4.4), constrained_layout=True)
    x = np.arange(len(names))
    width = 0.8 / len(summaries)
    cmap = plt.get_cmap("tab10")
    for ax, key in zip(axes, ("recall@10", "ndcg@10")):
        for j, (label, s) in enumerate(summaries):
            # a method a run does not have gets no bar (NaN), not a misleading zero
            means = [s["methods"][n][key]["mean"] if n in s["methods"] else np.nan for n in names]
            stds = [s["methods"][n][key]["std"] if n in s["methods"] else np.nan for n in names]
            ax.bar(x - 0.4 + width * (j + 0.5), means, width, yerr=stds, capsize=2, label=label, color=cmap(j))
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(key.replace("recall", "Recall").replace("ndcg", "NDCG"))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(4, len(summaries)),
               fontsize=9, frameon=False)
    fig.suptitle("Runs side by side (mean ± std over seeds)", fontsize=11)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- the report -----------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def _describe(view: RunView, summary: dict) -> str:
    cfg = view.config
    users = "all test users" if cfg.users is None else f"{cfg.users} sampled users"
    parts = [f"{users} × {len(cfg.seeds)} seed(s) ({', '.join(map(str, cfg.seeds))})", f"split: {cfg.part}", f"N = {cfg.top_n}",
             f"history: {cfg.history}"]
    if cfg.uses_llm:
        parts.append(f"LLM: {cfg.llm} via {cfg.backend}")
    text = "; ".join(parts) + ".  \nRun folder(s): " + ", ".join(f"`{f}`" for f in view.folders)
    if view.missing_shards:
        text += f"  \n**Incomplete:** shards {', '.join(view.missing_shards)} are missing."
    if view.bad_lines:
        text += f"  \n{view.bad_lines} unreadable line(s) skipped (a torn last line of a killed run)."
    return text


NOTES = """Notes. Leave-one-out, full ranking. With `--history exclude` (the default) every method's
target is ranked among the items outside the user's history; with `--history keep` the score
methods (pop, sasrec, bert4rec, tool:*) rank the history items too, as RecBole's sequential
full-ranking evaluation does (the paper's SASRec, BERT4Rec and P5 rows), and the agent's
retrieval lists hold history items too, as the authors' tools do. LLM methods never return
history items. The agent answers only items its tools gathered (`--answer-space gathered`) or
any catalogue item outside the history (`catalogue`, as the authors' code accepts); the
fallbacks column counts what changed an answer (prompts cut or shortened to fit the context,
a skipped final ranking, a top-up from the backbone, padding by retrieval score). Score methods rank the target
exactly over the catalogue; LLM methods rank it by its position in their top-N list, so their
@20 equals @N when N < 20. Rows are compared on the same users: the (seed, user) pairs that
every method with a finished user finished (in a complete run, every user); when a method
finished fewer, the table says so, the Improvement row is over those pairs too, and each
method's own figures over all the users it finished follow the table. Metrics are means over
the users of each seed, then mean ± (population) std over seeds; † marks a method with failed
or missing users. "Improvement" is ToolRec's relative gain over the best baseline present
(pop, sasrec, bert4rec, llmrank, chatrec), as in the paper's Table 2; in parentheses, the paired
difference behind it (Δ, its 95% bootstrap CI and the permutation test's p; the paper reports
no test)."""


STATS_NOTE = (f"Δ: the mean over the (seed, user) pairs of the method's per-user metric minus the reference's; "
              f"95% CI: {DESCRIPTION['ci']}; p: {DESCRIPTION['test']}. A CI that excludes 0 (p < 0.05) is a "
              f"difference the sample tells apart from none; with fewer than {DESCRIPTION['min_pairs']} pairs: {TOO_FEW}. "
              "vs: the method's backbone (SASRec; BERT4Rec for the BERT4Rec methods and the -b variants), and the best "
              "other method present by NDCG@10.")


def write_report(run_dirs: list[Path], out: Path | None = None) -> tuple[Path, Path, list[dict]]:
    views = load_runs([Path(d) for d in run_dirs])
    if not views:
        raise ToolrecError("nothing to report", "pass run folders written by `toolrec-local eval`")
    if out is None:
        out = Path(run_dirs[0]) / "report" if len(views) == 1 else Path(run_dirs[0]).parent / "report"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries: list[tuple[str, dict]] = []
    md = ["# ToolRec evaluation report", ""]
    for view in views:
        s = summarize(view.config, view.records, view.expected, view.missing_shards)
        s["label"] = view.label
        summaries.append((view.label, s))
        slug = _slug(view.label)
        md += [f"## {view.label}", "", _describe(view, s), "", table_title(s, view.label), "", markdown_table(s), ""]
        comp = markdown_comparisons(s)
        if comp:
            md += ["### Paired differences (method - reference, on the same pairs)", "", comp, "", STATS_NOTE, ""]
        own = markdown_own(s)
        if own:
            md += ["### Each method over all the users it finished (not paired: not comparable row to row)", "", own, ""]
        if s["methods"] and any(m["users"]["ok"] for m in s["methods"].values()):
            p = plot_metrics(s, out / f"metrics-{slug}.png", view.label)
            md += [f"![metrics]({p.name})", ""]
        llm = markdown_llm(s)
        if llm:
            md += ["### LLM cost per user", "", llm, "", fallback_line(s) or "No fallbacks were taken.", ""]
        rounds = markdown_rounds(s)
        if rounds:
            md += ["### Termination rounds (Figure 5)", "", rounds, ""]
            p = plot_rounds(s, out / f"rounds-{slug}.png", view.label)
            if p:
                md += [f"![rounds]({p.name})", ""]
    md += hits_section(summaries, out)
    if len(summaries) > 1:
        md += ["## Side by side (Figure 8)", "", markdown_compare(summaries), ""]
        p = plot_compare(summaries, out / "compare.png")
        md += [f"![compare]({p.name})", ""]
    protocols = "; ".join(f"{label}: `--history {s['history']}`" + (f" `--answer-space {s['answer_space']}`"
                                                                      if s.get("answer_space") else "")
                          for label, s in summaries)
    md += [NOTES, "", f"Protocol of each table: {protocols}.", ""]
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path, out, [s for _, s in summaries]
