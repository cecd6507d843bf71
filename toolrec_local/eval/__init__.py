"""Evaluation: the methods compared, the resumable runner, the run folder and the report.
Metrics (Recall/NDCG@N) live in `toolrec_local.metrics`, below both recsys and eval.

    catalog.py      the method table: one entry per method (kind, backbone, needs, builder), the only place names are
    methods.py      the kinds of method (score, list, LLM) and the non-LLM builders (pop, backbones, P5, tool:<attr>)
    llm_methods.py  the LLM builders over the agent (agent loop, plan, the ranking baselines) and their suite
    runner.py       every (method, seed, user) once: batches for score and list methods, asyncio for LLM ones
    results.py      results.jsonl / trajectories.jsonl: append, flush per line, torn-line repair
    rundir.py       run.json (what must match on re-run), shards, the writer's lock, reading runs back
    session.py      one `eval` invocation: assemble_run (plan, methods, run.json), open_run (capacity, folder,
                    writer, runner), run, write summary.json; the run's settings are toolrec_local/settings.py
    summary.py      mean ± std over seeds on the users every method finished (paired), LLM cost,
                    termination rounds, Table 2's improvement row
    hits.py         where each LLM method's hits are won and lost: per user, target never gathered /
                    ranked out / kept; the ranking calls' pick positions and copying; tool calls per round
    hits_report.py  that decomposition in the report (tables, hits.png)
    report.py       Markdown tables and matplotlib plots (metrics, rounds, runs side by side)
    progress.py     the live Rich display
    commands.py     `toolrec-local eval` and `toolrec-local report`
"""
