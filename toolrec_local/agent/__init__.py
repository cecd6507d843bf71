"""The surrogate-user agent (paper, sections 3.2-3.4).

    ctx = AgentContext(dataset, RetrievalTool.load(dataset), backend, AgentConfig())  # once
    traj = await run_agent(ctx, user)            # Trajectory: .final_items, .rounds, .final_step, .to_dict()
    items, rnd = await llm_rank(ctx, user, lists, k=10)     # the Rank tool alone on ToolLists (baselines)
    traj = await run_plan(ctx, user)             # the "w/ Plan" ablation

Modules: actions (formats and parsers), itemlists (Rank answers), memory (checks, tool marks,
the round-robin merge of lists), prompts (YAML templates in prompts/), tools (Retrieval, Rank,
the final step), conversation (the message history, fitted for the prefix cache), loop (the
rounds), baselines (the LLM ranking baselines), trajectory (records), view and commands
(`toolrec-local recommend`).
"""

__all__ = ["AgentConfig", "AgentContext", "run_agent", "llm_rank", "run_plan", "Trajectory", "Round"]
_HOME = {"AgentConfig": "context", "AgentContext": "context", "run_agent": "loop", "llm_rank": "baselines",
         "run_plan": "loop", "Trajectory": "trajectory", "Round": "trajectory"}


def __getattr__(name: str):
    # Lazy, so that `toolrec-local --help` (which imports agent.commands) stays instant.
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"toolrec_local.agent.{_HOME[name]}"), name)
    raise AttributeError(name)
