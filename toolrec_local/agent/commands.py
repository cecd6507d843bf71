"""`toolrec-local recommend`: run the agent for one user and show its trajectory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from toolrec_local.console import console, print_json
from toolrec_local.settings import RunSettings

RUN = RunSettings()  # the options' defaults, defined there

HELP = """Run ToolRec for one user: the LLM, as a surrogate user, calls the retrieval tools and
the rank tool round by round; at Finish (or the round cap) it ranks every gathered list into
the top N (--finish last-list: the last list is the answer). Shows every round and the final
step (thought, action, items, cost, the held-out target highlighted) or, with --json, the trajectory as JSON
(item ids are the dataset's own). Needs the dataset prepared, the retrieval tools trained,
and the LLM served (--backend vllm, --server URL) or loadable in process (--backend local)."""


def register(app: typer.Typer) -> None:
    app.command("recommend", help=HELP)(recommend)


def recommend(
    dataset: str = typer.Option(..., "--dataset", "-d", help="A prepared dataset, e.g. ml-100k."),
    user: str = typer.Option(..., "--user", "-u", help="The dataset's own user id."),
    llm: str = typer.Option(..., "--llm", help="Model name (toolrec-local models list)."),
    backend: str = typer.Option(RUN.backend, "--backend", help="vllm (a vLLM server), local (in process), openai."),
    server: Optional[str] = typer.Option(None, "--server", help="Server base URL (vllm default http://127.0.0.1:8000/v1)."),
    model_path: Optional[Path] = typer.Option(None, "--model-path", help="Weights folder for --backend local."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="API key (default: TOOLREC_API_KEY for a vLLM server, OPENAI_API_KEY for --backend openai)."),
    backbone: str = typer.Option("sasrec", "--backbone", help="Retrieval backbone: sasrec or bert4rec."),
    history_len: int = typer.Option(10, "--history-len", min=0, help="History items shown to the LLM."),
    max_rounds: int = typer.Option(RUN.max_rounds, "--max-rounds", help="Decision rounds (a Finish or an unreadable reply counts as one), the forced final step not counted: at the cap the agent finishes. Default 7, the authors' cap."),
    demos: int = typer.Option(RUN.demos, "--demos", help="In-context demonstrations in the agent's prompt: the first N of prompts/<domain>.yaml (default 3, as many as the authors ship)."),
    observe_items: Optional[int] = typer.Option(RUN.observe_items, "--observe-items", help="Items of each tool list shown in the agent's observation (default: the whole list, as in the authors' code)."),
    top_n: int = typer.Option(RUN.top_n, "--top-n", help="Length of the final list."),
    context: Optional[int] = typer.Option(None, "--context", min=0, help="The model's context in tokens, prompts are fitted into it (default: what the vLLM server reports, else the model card; 0: no limit)."),
    part: str = typer.Option(RUN.part, "--part", help="Split: test (predict the last item) or valid."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed passed to the LLM."),
    temperature: float = typer.Option(RUN.temperature, "--temperature", help="Sampling temperature: 0 is greedy (the paper ran ChatGPT at 1)."),
    finish: str = typer.Option(RUN.finish, "--finish", help="The final step: llm (the LLM ranks every gathered list) or last-list (the last list, cut or padded; no LLM call)."),
    no_grammar: bool = typer.Option(False, "--no-grammar", help="Free text and a tolerant parser instead of grammar-constrained output."),
    rank_llm: Optional[str] = typer.Option(RUN.rank_llm, "--rank-llm", help="The model Rank and the final step ask, on its own backend of --backend's kind (default: --llm)."),
    rank_server: Optional[str] = typer.Option(None, "--rank-server", help="Base URL of the --rank-llm model's vLLM server."),
    rank_by: str = typer.Option(RUN.rank_by, "--rank-by", help="How Rank and the final step rank: generate (the LLM writes the top K) or score (the candidates under letter labels, ordered by their label's log-probability)."),
    rank_shuffles: int = typer.Option(RUN.rank_shuffles, "--rank-shuffles", help="--rank-by generate: N more rankings in seeded shuffled candidate orders, merged by Borda count."),
    plan: bool = typer.Option(False, "--plan", help="The 'w/ Plan' variant: write the whole plan, then execute it."),
    json_out: bool = typer.Option(False, "--json", help="Print the trajectory as JSON."),
):
    import asyncio

    from toolrec_local.agent.context import AgentConfig, AgentContext
    from toolrec_local.agent.loop import run_agent, run_plan
    from toolrec_local.agent.view import show
    from toolrec_local.data import load_dataset
    from toolrec_local.llm.factory import make_backend
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    settings = RunSettings(llm=llm, backend=backend, top_n=top_n, part=part, grammar=not no_grammar,
                           temperature=temperature, finish=finish, max_rounds=max_rounds, demos=demos,
                           observe_items=observe_items, rank_by=rank_by, rank_shuffles=rank_shuffles,
                           rank_llm=rank_llm)
    ds = load_dataset(dataset)
    uid = ds.user(user)
    tool = RetrievalTool.load(ds, backbone=backbone)
    config = AgentConfig.of(settings, history_len=history_len, context_tokens=context)
    llm_backend = make_backend(llm, backend, base_url=server, api_key=api_key, model_path=model_path)
    rank_backend = (make_backend(rank_llm, backend, base_url=rank_server, api_key=api_key) if rank_llm else None)
    ctx = AgentContext(ds, tool, llm_backend, config, rank_backend=rank_backend)

    async def go():
        try:
            return await (run_plan if plan else run_agent)(ctx, uid, part=settings.part, seed=seed)
        finally:
            await llm_backend.aclose()
            if rank_backend is not None:
                await rank_backend.aclose()

    traj = asyncio.run(go())
    if json_out:
        print_json(traj.to_dict())
    else:
        show(console, ds, traj)
