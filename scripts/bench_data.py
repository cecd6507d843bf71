#!/usr/bin/env python
"""Time to prepare and to reload ML-100K and a synthetic ML-1M-sized dataset
(6,040 users, 3,706 items, 1,000,209 interactions, RecBole atomic files).

    python scripts/bench_data.py [--json] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_ml1m(folder: Path, users=6040, items=3706, interactions=1_000_209, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    # Zipf-like item popularity, every user at least 20 interactions, as in ML-1M.
    weights = rng.zipf(1.6, users).clip(max=2000).astype(float)
    per_user = 20 + rng.multinomial(interactions - 20 * users, weights / weights.sum())
    pop = 1.0 / np.arange(1, items + 1) ** 0.8
    pop /= pop.sum()
    u = np.repeat(np.arange(1, users + 1), per_user)
    it = rng.choice(np.arange(1, items + 1), size=len(u), p=pop)
    ts = 956703932 + rng.integers(0, 10**8, size=len(u))
    r = rng.integers(1, 6, size=len(u))
    with open(folder / "ml1m-synth.inter", "w") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        fh.writelines(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in zip(u, it, r, ts))
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Children's"]
    with open(folder / "ml1m-synth.item", "w") as fh:
        fh.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n")
        fh.writelines(
            f"{i}\tMovie {i}\t{1919 + i % 81}\t{' '.join(rng.choice(genres, size=1 + i % 3, replace=False))}\n"
            for i in range(1, items + 1)
        )
    return folder


def bench(name: str, source: Path | None, attributes=None) -> dict:
    from toolrec_local import data

    t0 = time.perf_counter()
    ds = data.prepare(name, source=source, attributes=attributes)
    prepare_s = time.perf_counter() - t0
    data._CACHE.clear()
    reloads = []
    for _ in range(5):
        data._CACHE.clear()
        t0 = time.perf_counter()
        again = data.load_dataset(name)
        _ = again.seq_items[-1], again.item_index  # touch the arrays and build the id index
        reloads.append(time.perf_counter() - t0)
    return {
        "dataset": name, "users": ds.n_users, "items": ds.n_items, "interactions": ds.n_interactions,
        "prepare_s": round(prepare_s, 3), "reload_s_median": round(float(np.median(reloads)), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print JSON only")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TOOLREC_HOME"] = str(Path(tmp) / "home")
        rows = [bench("ml-100k", None)]
        t0 = time.perf_counter()
        src = synthetic_ml1m(Path(tmp) / "synth")
        gen_s = time.perf_counter() - t0
        rows.append(bench("ml1m-synth", src, ["genre", "release_year"]) | {"generate_s": round(gen_s, 2)})
    result = {"benchmark": "data", "rows": rows, "target": {"ml1m_reload_s": 1.0}}
    result["ok"] = rows[1]["reload_s_median"] <= 1.0
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'dataset':<12} {'users':>6} {'items':>6} {'interactions':>12} {'prepare s':>10} {'reload s':>9}")
    for r in rows:
        print(f"{r['dataset']:<12} {r['users']:>6} {r['items']:>6} {r['interactions']:>12} {r['prepare_s']:>10} {r['reload_s_median']:>9}")
    print(f"reload of the ML-1M-sized set within 1 s: {'yes' if result['ok'] else 'NO'}")


if __name__ == "__main__":
    main()
