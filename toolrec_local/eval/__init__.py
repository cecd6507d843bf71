"""Evaluation: the methods compared, the resumable runner, the run folder and the report.
Metrics (Recall/NDCG@N) live in `toolrec_local.metrics`, below both recsys and eval.

    methods.py      method names; score methods (pop, sasrec, bert4rec, *-bert, tool:<attr>), list methods (p5)
    llm_methods.py  LLM methods over the agent (toolrec, toolrec-b, plan, llmrank, chatrec, single, multi)
    runner.py       every (method, seed, user) once: batches for score and list methods, asyncio for LLM ones
    results.py      results.jsonl / trajectories.jsonl: append, flush per line, torn-line repair
    rundir.py       run.json (what must match on re-run), shards, the writer's lock, reading runs back
    session.py      one `eval` invocation: check options, build methods, run, write summary.json
    summary.py      mean ± std over seeds on the users every method finished (paired), LLM cost,
                    termination rounds, Table 2's improvement row
    hits.py         where each LLM method's hits are won and lost: per user, target never gathered /
                    ranked out / kept; the ranking calls' pick positions and copying; tool calls per round
    hits_report.py  that decomposition in the report (tables, hits.png)
    report.py       Markdown tables and matplotlib plots (metrics, rounds, runs side by side)
    progress.py     the live Rich display
    commands.py     `toolrec-local eval` and `toolrec-local report`
"""
