"""Where an LLM method's hits are won and lost, read from its trajectories.

Each finished user is one of:
* never gathered: the target is in no list a tool returned (the pool), so no ranking could list it;
* ranked out: the target was gathered, but the LLM's ranking (or, for a `/last-list` variant,
  the cut of the last list) left it out of the final top N;
* kept: the target is in the final list, at some position (a hit at N).
The target's rank in the best single gathered list (the tool list where it ranks highest)
says how close the tools came.

Every LLM ranking call (the agent's Rank tool, its final step, the one call of llmrank,
chatrec, single and multi) is measured against the candidates its prompt showed: the
positions of its picks in the order shown (first appearance, 1-based), and how much of the
answer is copied from the prompt: the share of consecutive picks where the second is the line
right after the first in one shown list, beside the share chance alone would give (adjacent
line pairs over ordered pairs of candidates), and the longest such run. The agent's tool calls
are counted per round: which tool, attribute and K, and repeats of an identical earlier call.

Trajectories written before a ranking call recorded what it was shown (`shown`, `picked`) give
no pick profile for it ("n/a"); a baseline's call is then measured on the candidate lists it
was given when its note says none were cut for the context.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from toolrec_local.eval.results import OK, load_trajectory

NEVER, RANKED_OUT, KEPT, UNKNOWN = "never_gathered", "ranked_out", "kept", "unknown"
CLASSES = (NEVER, RANKED_OUT, KEPT)
BUCKETS = ((1, 5), (6, 10), (11, 20), (21, 30), (31, None))
BUCKET_NAMES = tuple(f"{lo}-{hi}" if hi else f">{lo - 1}" for lo, hi in BUCKETS)
CALL_KINDS = ("rank", "final", "list")  # the agent's Rank tool, its final step, a baseline's one call
_ACTION = re.compile(r"^(Retrieval|Rank)\[([^,\]]+), (-?\d+)\]$")
_CUT_NOTES = ("candidates shown", "shown once")  # rank_lists' notes when the context cut the candidates


def bucket(position: int) -> str:
    return next(name for (lo, hi), name in zip(BUCKETS, BUCKET_NAMES) if hi is None or position <= hi)


def trajectory_of(record: dict) -> dict | None:
    """The record's trajectory (None when it has none or its line cannot be read)."""
    pointer = record.get("trajectory")
    if not pointer or ("file" in pointer and "_folder" not in record):
        return None
    try:
        return load_trajectory(Path(record.get("_folder", ".")), pointer)
    except (OSError, ValueError, KeyError):
        return None


# ---- one trajectory ----------------------------------------------------------------------
def _invalid(step: dict) -> bool:
    return str(step.get("note", "")).startswith("Invalid action")


def tool_lists(traj: dict) -> list[list[str]]:
    """The lists the tools returned, in order (a baseline: the candidate lists it was given;
    the agent: every Retrieval's list, and the backbone top-up of its final step)."""
    if "groups" in traj:
        return [list(g.get("items", [])) for g in traj["groups"]]
    lists = [list(r.get("observation") or []) for r in traj.get("rounds", [])
             if str(r.get("action", "")).startswith("Retrieval") and not _invalid(r)]
    finish = traj.get("finish") or {}
    topped = [g for g in finish.get("shown", []) if g["mark"].startswith("Retrieval[None")]
    if topped and "added the backbone's top" in finish.get("note", ""):
        lists.append(list(topped[-1]["items"]))  # conclude stores its top-up last
    return lists


def ranking_calls(traj: dict) -> list[tuple[str, list[dict] | None, list[str] | None]]:
    """(kind, the lists the prompt showed, the items the LLM picked) of each LLM ranking call;
    shown and picks are None when the trajectory did not record them."""
    if "groups" in traj:
        if not (traj.get("totals") or {}).get("llm_calls"):
            return []  # no candidate left to rank: no call was made
        shown = traj.get("shown")
        if not shown and not any(n in traj.get("note", "") for n in _CUT_NOTES):
            shown = traj["groups"]  # nothing was cut: the prompt showed the lists as given
        picked = traj.get("picked")
        if picked is None and not (traj.get("totals") or {}).get("repairs"):
            picked = len(traj.get("final", []))  # no repair: every item is the LLM's
        picks = None if picked is None else list(traj.get("final", []))[:picked]
        return [("list", shown or None, picks if shown else None)]
    calls = []
    steps = [("rank", r) for r in traj.get("rounds", []) if str(r.get("action", "")).startswith("Rank") and not _invalid(r)]
    finish = traj.get("finish")
    if finish and finish.get("llm_calls"):
        steps.append(("final", finish))
    for kind, step in steps:
        shown = step.get("shown")
        calls.append((kind, shown, list(step.get("observation") or [])[: step.get("picked", 0)] if shown else None))
    return calls


def call_profile(shown: list[dict], picks: list[str]) -> dict:
    """Where one call's picks sat in what it was shown, and how much of it is a copied run."""
    order = list(dict.fromkeys(i for g in shown for i in g["items"]))
    where = {item: n for n, item in enumerate(order, 1)}
    adjacent = {(a, b) for g in shown for a, b in zip(g["items"], g["items"][1:])}
    steps = [(a, b) in adjacent for a, b in zip(picks, picks[1:])]
    longest = run = min(1, len(picks))
    for step in steps:
        run = run + 1 if step else 1
        longest = max(longest, run)
    positions = [where[i] for i in picks if i in where]
    n = len(order)
    return {"positions": positions, "pairs": len(steps), "adjacent": sum(steps), "longest_run": longest,
            "in_order": bool(positions) and positions == list(range(1, len(positions) + 1)),
            "chance": len(adjacent) / (n * (n - 1)) if n > 1 else 0.0}


def tool_calls(traj: dict) -> list[dict]:
    """The agent's actions by round: tool, attribute, K (as asked), and whether an identical
    call came earlier in the same run."""
    seen, out = set(), []
    for n, r in enumerate(traj.get("rounds", []) if "groups" not in traj else [], 1):
        action = str(r.get("action", ""))
        m = _ACTION.match(action)
        tool = m.group(1) if m else "Finish" if action == "Finish" else "invalid"
        out.append({"round": n, "tool": tool, "attribute": m.group(2) if m else None,
                    "k": int(m.group(3)) if m else None, "repeat": bool(m) and action in seen})
        seen.add(action)
    return out


def user_hits(record: dict, traj: dict | None) -> dict:
    """One user of one method: the class, the target's best rank in a gathered list, its
    position in the final list, whether the last ranking call was shown it, and the calls."""
    target = str(record.get("target") or (traj or {}).get("target") or "")
    position = None if record.get("rank") is None else int(record["rank"]) + 1
    lists = tool_lists(traj) if traj else None
    ranks = [lst.index(target) + 1 for lst in lists or [] if target in lst]
    best = min(ranks) if ranks else None
    cls = KEPT if position is not None else UNKNOWN if lists is None else RANKED_OUT if best else NEVER
    calls = ranking_calls(traj) if traj else []
    last = calls[-1] if calls and calls[-1][0] != "rank" else None  # the call that made the final list
    seen = None if last is None or last[1] is None else any(target in g["items"] for g in last[1])
    return {"user": record.get("user"), "seed": record.get("seed"), "class": cls, "best_list_rank": best,
            "final_position": position, "target_shown": seen,
            "calls": [(kind, call_profile(shown, picks) if shown is not None and picks is not None else None)
                      for kind, shown, picks in calls],
            "tool_calls": tool_calls(traj) if traj else []}


# ---- one method --------------------------------------------------------------------------
def _share(n: int, of: int) -> float | None:
    return round(n / of, 4) if of else None


def _keyed(counter: Counter) -> dict:
    """Counts keyed by text: numbers in order, then names (the backbone's "None" last)."""
    order = sorted(counter, key=lambda k: (isinstance(k, str), k == "None", k if isinstance(k, int) else 0, str(k)))
    return {str(k): counter[k] for k in order}


def ranking_block(profiles: list[dict | None]) -> dict:
    """The pick-position profile and copying figures over one kind of call."""
    done = [p for p in profiles if p is not None]
    positions = [x for p in done for x in p["positions"]]
    pairs = sum(p["pairs"] for p in done)
    runs = [p["longest_run"] for p in done]
    counts = Counter(bucket(x) for x in positions)
    return {
        "calls": len(profiles), "measured": len(done), "picks": len(positions),
        "positions": {b: counts.get(b, 0) for b in BUCKET_NAMES},
        "mean_position": round(sum(positions) / len(positions), 2) if positions else None,
        "adjacent_share": _share(sum(p["adjacent"] for p in done), pairs),
        "chance": round(sum(p["chance"] for p in done) / len(done), 4) if done else None,
        "longest_run": {"mean": round(sum(runs) / len(runs), 2), "max": max(runs)} if runs else None,
        "in_order": _share(sum(p["in_order"] for p in done), len(done)),
    }


def _tool_counts(calls: list[dict]) -> dict:
    return {"calls": len(calls), "tools": _keyed(Counter(c["tool"] for c in calls)),
            "attributes": _keyed(Counter(c["attribute"] for c in calls if c["attribute"])),
            "k": _keyed(Counter(c["k"] for c in calls if c["k"] is not None)),
            "repeats": sum(c["repeat"] for c in calls)}


def tool_block(rows: list[dict]) -> dict | None:
    calls = [c for r in rows for c in r["tool_calls"]]
    if not calls:
        return None
    rounds = sorted({c["round"] for c in calls})
    return {"rounds": {str(n): _tool_counts([c for c in calls if c["round"] == n]) for n in rounds},
            "total": _tool_counts(calls)}


def hits_block(records: list[dict]) -> dict:
    """summary.json's `hits` of one LLM method, over its finished `records`."""
    rows = [user_hits(r, trajectory_of(r)) for r in records if r.get("status") == OK]
    n = len(rows)
    classes = Counter(r["class"] for r in rows)
    out_rows = [r for r in rows if r["class"] == RANKED_OUT]
    unseen = [r for r in out_rows if r["target_shown"] is not None]
    kinds = {kind: [p for r in rows for k, p in r["calls"] if k == kind] for kind in CALL_KINDS}
    return {
        "users": n,
        "classes": {c: {"n": classes.get(c, 0), "share": _share(classes.get(c, 0), n)} for c in (*CLASSES, UNKNOWN)},
        # ranked out before the LLM saw it: the final ranking's prompt was cut for the context
        "ranked_out_unseen": sum(not r["target_shown"] for r in unseen) if unseen else None,
        "best_list_rank": {b: sum(1 for r in rows if r["best_list_rank"] and bucket(r["best_list_rank"]) == b)
                           for b in BUCKET_NAMES},
        "kept_positions": _keyed(Counter(r["final_position"] for r in rows if r["class"] == KEPT)),
        "ranking": {kind: ranking_block(p) for kind, p in kinds.items() if p},
        "tool_calls": tool_block(rows),
    }
