"""`toolrec-local eval` and `toolrec-local report`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from toolrec_local.console import console, err_console, print_json
from toolrec_local.settings import RunSettings

RUN = RunSettings()  # the options' defaults: one per setting, defined there

EVAL_HELP = """Evaluate methods on a dataset: leave-one-out, full ranking, Recall/NDCG @5/@10/@20.

Methods: pop, sasrec, bert4rec, sasrec-bert, bert4rec-bert, p5, tool:<attr> (no LLM); toolrec, toolrec-b,
llmrank, chatrec, single, multi, plan (need --llm). --finish last-list (or both) adds the rows
toolrec/last-list etc.: the agent's answer without the final LLM ranking. Results go to --out
(default runs/DATASET-LLM): results.jsonl
(one line per method, seed and user, flushed as each user finishes), trajectories.jsonl,
run.json and summary.json. Re-running the same command resumes: finished users are skipped,
failed ones retried. Into an existing folder only methods may be added; other options must match.
A user whose LLM calls fail is recorded as failed and reported (summary.json: "complete": false);
if many users in a row fail (server down), the command stops with exit code 2.

Protocol: --history exclude (default) ranks every method's target among the items outside the
user's history; --history keep lets score methods rank history items too, as RecBole's
sequential full ranking (the paper's SASRec, BERT4Rec and P5 rows) does, and the agent's
retrieval lists show history items (the authors' tools do not mask them). LLM methods never
return history items. --answer-space catalogue lets the agent's Rank and final step answer any
catalogue item outside the history (default gathered: only items its tools returned);
--history keep --answer-space catalogue is the authors' condition. A folder holds one protocol,
one --finish and one --answer-space.
Methods are compared on the (seed, user) pairs every one of them finished ("paired"): each
against its backbone and the best other method, by the mean difference, its 95% bootstrap CI
and a paired permutation test's p (summary.json: comparisons). Users: --users per sample, the
samples --seeds N (0..N-1) or --seed S, repeated (e.g. users no prompt was tuned on).

Scaling: users run concurrently against the vLLM server, as many as its KV cache holds
(--concurrency auto, read from the server's /metrics) or a number; pass --server several
times to spread users over replicas (each user stays on one), and --shard i/n to run a deterministic slice per node
(`report` merges the shards). Multi-GPU (tensor parallel) and multi-node serving are vLLM's
own: see serving/README.md.
"""


def register(app: typer.Typer) -> None:
    app.command("eval", help=EVAL_HELP)(eval_cmd)
    app.command("report")(report_cmd)


def eval_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help="A prepared dataset (toolrec-local data list)."),
    method: str = typer.Option(..., "--method", "-m", help="Comma-separated methods, e.g. pop,sasrec,tool:genre,toolrec."),
    llm: Optional[str] = typer.Option(RUN.llm, "--llm", help="Model name (toolrec-local models list); needed by LLM methods."),
    users: int = typer.Option(200, "--users", help="Users sampled per seed (the paper: 200)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="User samples (seeds 0..n-1). Default 3; 1 with --all-users."),
    seed: List[int] = typer.Option([], "--seed", help="A user sample by its seed, instead of --seeds; repeat for more (--seed 3 --seed 4)."),
    all_users: bool = typer.Option(False, "--all-users", help="Every test user instead of a sample."),
    concurrency: str = typer.Option("auto", "--concurrency", "-c", help="Users in flight per server: auto (as many as the vLLM server's KV cache holds) or a number, which also caps auto's count. local runs one at a time."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/DATASET-LLM)."),
    backend: str = typer.Option(RUN.backend, "--backend", help="vllm (OpenAI-compatible vLLM server), local (in process), openai."),
    server: List[str] = typer.Option([], "--server", help="Server base URL; repeat to spread users over replicas."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="API key (default: TOOLREC_API_KEY for a vLLM server, OPENAI_API_KEY for --backend openai)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Run slice i of n (e.g. 2/4) of the (seed, user) pairs."),
    top_n: int = typer.Option(RUN.top_n, "--top-n", help="Length of the recommended list (N)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Users scored per batch by the non-LLM methods."),
    no_grammar: bool = typer.Option(False, "--no-grammar", help="Let the LLM write free text (the paper's setting) instead of grammar-constrained output."),
    history: str = typer.Option(RUN.history, "--history", help="exclude: rank among items outside the user's history; keep: score methods rank history items too (RecBole's protocol)."),
    finish: str = typer.Option(RUN.finish, "--finish", help="The agent methods' final step: llm (the LLM ranks every gathered list, as the authors' code), last-list (the ablation: the last list cut or padded, no LLM call; rows named e.g. toolrec/last-list), or both (both rows from one run)."),
    temperature: float = typer.Option(RUN.temperature, "--temperature", help="LLM sampling temperature: 0 is greedy (the paper ran ChatGPT at 1)."),
    answer_space: str = typer.Option(RUN.answer_space, "--answer-space", help="What the agent's Rank and final step may answer: gathered (only items its tools returned) or catalogue (any catalogue item outside the history, as the authors' code accepts; with --history keep: the authors' condition)."),
    repeated_lists: str = typer.Option(RUN.repeated_lists, "--repeated-lists", help="A tool list identical to an earlier one (a repeated call): refer (its observation and its place in the Rank and final prompts name the earlier list) or full (listed again, as the authors' code does)."),
    rank_llm: Optional[str] = typer.Option(RUN.rank_llm, "--rank-llm", help="The model every LLM ranking step asks (e.g. a tuned ranker), on its own backend of --backend's kind; default: the --llm model."),
    rank_server: List[str] = typer.Option([], "--rank-server", help="Base URL of the --rank-llm model's vLLM server (repeat for replicas, round-robin; default http://127.0.0.1:8000/v1)."),
    rank_by: str = typer.Option(RUN.rank_by, "--rank-by", help="How every LLM ranking step ranks (Rank, the final step, llmrank, chatrec, single, multi): generate (the LLM writes the top K, one item per line) or score (one request per 52 candidates under letter labels, the candidates ordered by their label's log-probability as the answer: LlamaRec's verbalizer)."),
    rank_shuffles: int = typer.Option(RUN.rank_shuffles, "--rank-shuffles", help="--rank-by generate: N more rankings of each step's candidates in seeded shuffled orders, merged with the first by Borda count (LLMRank's remedy for position bias); N+1 times the ranking calls."),
    max_rounds: int = typer.Option(RUN.max_rounds, "--max-rounds", help="The agent methods: Decision rounds (a Finish or an unreadable reply counts as one), the forced final step not counted: at the cap the agent finishes. Default 7, the authors' cap."),
    demos: int = typer.Option(RUN.demos, "--demos", help="The agent methods: In-context demonstrations in the agent's prompt: the first N of prompts/<domain>.yaml (default 3, as many as the authors ship)."),
    observe_items: Optional[int] = typer.Option(RUN.observe_items, "--observe-items", help="The agent methods: Items of each tool list shown in the agent's observation (default: the whole list, as in the authors' code)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    from toolrec_local.eval.progress import EvalProgress
    from toolrec_local.eval.rundir import parse_shard
    from toolrec_local.eval.session import EvalOptions, evaluate

    settings = RunSettings(llm=llm, backend=backend, top_n=top_n, grammar=not no_grammar, history=history,
                           finish=finish, temperature=temperature, repeated_lists=repeated_lists,
                           rank_by=rank_by, rank_shuffles=rank_shuffles, rank_llm=rank_llm,
                           answer_space=answer_space, max_rounds=max_rounds, demos=demos, observe_items=observe_items)
    opts = EvalOptions(
        dataset=dataset, methods=method, settings=settings, users=users, seeds=seeds, seed=list(seed),
        all_users=all_users,
        concurrency=parse_concurrency(concurrency), out=out, servers=list(server), api_key=api_key,
        rank_servers=list(rank_server),
        shard=parse_shard(shard), batch_size=batch_size,
    )
    with EvalProgress(err_console) as progress:
        summary, folder = evaluate(opts, on_update=progress.update, on_note=progress.note)
    from toolrec_local.eval.summary import brief

    if json_out:
        out_json = brief(summary)
        out_json["run_dir"] = str(folder)
        print_json(out_json)
    else:
        from toolrec_local.eval.report import comparison_table, fallback_line, summary_table

        console.print(summary_table(summary))
        comparisons = comparison_table(summary)
        if comparisons is not None:
            console.print(comparisons)
        for line in server_lines(summary):
            console.print(line, highlight=False)
        if fallback_line(summary):
            console.print(f"[yellow]{fallback_line(summary)}[/]", highlight=False)
        console.print(f"results in [bold]{folder}[/]  (report: toolrec-local report {folder})")
    _warn_incomplete(summary)


def parse_concurrency(text: str) -> int | None:
    """"auto" -> None; a positive number -> itself."""
    from toolrec_local.errors import ToolrecError

    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ToolrecError(f"bad --concurrency {text!r}", "pass auto (the default) or a number of users, e.g. --concurrency 8")
    return value


def server_lines(summary: dict) -> list[str]:
    """What the LLM servers' /metrics counted during this invocation, per method."""
    lines = []
    for name, use in (summary.get("llm_server") or {}).items():
        if not use.get("prompt_tokens"):
            continue
        rate = use["prefix_cache_hit_rate"]
        lines.append(f"{name}: prefix cache served {100 * rate:.1f}% of {use['prompt_tokens']:,} prompt tokens "
                     f"(computed {use['computed_tokens']:,}, generated {use['generation_tokens']:,}"
                     + (f", {use['preemptions']} preemptions" if use.get("preemptions") else "") + ")")
    return lines


def _warn_incomplete(summary: dict) -> None:
    for name, m in summary["methods"].items():
        if m["users"]["failed"]:
            first = next(iter(m.get("errors", {})), "")
            err_console.print(f"[yellow]warning:[/] {name}: {m['users']['failed']} users failed ({first}); "
                              "re-run the same command to retry them")
    if summary.get("missing_shards"):
        err_console.print(f"[yellow]note:[/] shards not in this folder yet: {', '.join(summary['missing_shards'])}")


def report_cmd(
    run_dirs: List[Path] = typer.Argument(..., help="Run folders; shards of one run are merged, different runs (e.g. one per LLM) go side by side."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: RUN_DIR/report for one run, reports/comparison otherwise)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summaries as JSON."),
):
    """Markdown report (Table-2-style table, mean ± std, best in bold) and PNG plots: metrics per
    method with error bars, termination rounds (all users vs hits), and runs side by side."""
    from toolrec_local.eval.report import write_report

    md, folder, summaries = write_report(run_dirs, out)
    if json_out:
        print_json({"report": str(md), "runs": summaries})
    else:
        console.print(f"report: [bold]{md}[/]")
        for p in sorted(folder.glob("*.png")):
            console.print(f"  plot: {p}")
