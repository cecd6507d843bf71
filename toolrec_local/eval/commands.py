"""`toolrec-local eval` and `toolrec-local report`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from toolrec_local.console import console, err_console, print_json

EVAL_HELP = """Evaluate methods on a dataset: leave-one-out, full ranking, Recall/NDCG @5/@10/@20.

Methods: pop, sasrec, bert4rec, sasrec-bert, bert4rec-bert, p5, tool:<attr> (no LLM); toolrec, toolrec-b, llmrank, chatrec,
single, multi, plan (need --llm). Results go to --out (default runs/DATASET-LLM): results.jsonl
(one line per method, seed and user, flushed as each user finishes), trajectories.jsonl,
run.json and summary.json. Re-running the same command resumes: finished users are skipped,
failed ones retried. Into an existing folder only methods may be added; other options must match.
A user whose LLM calls fail is recorded as failed and reported (summary.json: "complete": false);
if many users in a row fail (server down), the command stops with exit code 2.

Scaling: users run concurrently (--concurrency) against the vLLM server; pass --server several
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
    llm: Optional[str] = typer.Option(None, "--llm", help="Model name (toolrec-local models list); needed by LLM methods."),
    users: int = typer.Option(200, "--users", help="Users sampled per seed (the paper: 200)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="User samples (seeds 0..n-1). Default 3; 1 with --all-users."),
    all_users: bool = typer.Option(False, "--all-users", help="Every test user instead of a sample."),
    concurrency: int = typer.Option(32, "--concurrency", "-c", min=1, help="Users in flight at once (vllm/openai; local runs one at a time)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/DATASET-LLM)."),
    backend: str = typer.Option("vllm", "--backend", help="vllm (OpenAI-compatible vLLM server), local (in process), openai."),
    server: List[str] = typer.Option([], "--server", help="Server base URL; repeat to spread users over replicas."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TOOLREC_API_KEY", help="API key for the server (or OPENAI_API_KEY for openai)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Run slice i of n (e.g. 2/4) of the (seed, user) pairs."),
    top_n: int = typer.Option(10, "--top-n", help="Length of the recommended list (N)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Users scored per batch by the non-LLM methods."),
    no_grammar: bool = typer.Option(False, "--no-grammar", help="Let the LLM write free text (the paper's setting) instead of grammar-constrained output."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
):
    from toolrec_local.eval.progress import EvalProgress
    from toolrec_local.eval.rundir import parse_shard
    from toolrec_local.eval.session import EvalOptions, evaluate

    opts = EvalOptions(
        dataset=dataset, methods=method, llm=llm, users=users, seeds=seeds, all_users=all_users,
        concurrency=concurrency, out=out, backend=backend, servers=list(server), api_key=api_key,
        shard=parse_shard(shard), top_n=top_n, batch_size=batch_size, grammar=not no_grammar,
    )
    with EvalProgress(err_console) as progress:
        summary, folder = evaluate(opts, on_update=progress.update)
    from toolrec_local.eval.summary import brief

    if json_out:
        out_json = brief(summary)
        out_json["run_dir"] = str(folder)
        print_json(out_json)
    else:
        from toolrec_local.eval.report import summary_table

        console.print(summary_table(summary))
        console.print(f"results in [bold]{folder}[/]  (report: toolrec-local report {folder})")
    _warn_incomplete(summary)


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
