"""RecBole 1.2.1's own SASRec, run by scripts/bench_recbole.py under a Python that has RecBole
(never the project's). It imports nothing from toolrec_local.

    python recbole_sasrec.py WORK EPOCHS SETTINGS_JSON

WORK holds ml-100k-loo/ml-100k-loo.inter (our split: per-user timestamps 0, 1, 2, ... in our
order, so RecBole's leave-one-out holds out the same items) and histories.json (our item ids,
per part, for the evaluation users). Per epoch this prints one JSON line: RecBole's own
validation result (history kept, as RecBole ranks) and the training seconds; and saves the
full-catalogue scores of each history in our item ids (WORK/scores-EPOCH-PART.npy), which the
parent ranks with our own metrics.
"""

import json
import os
import sys
import time

import numpy as np
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed

torch.set_num_threads(1)
work, epochs, settings = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
cfg = {
    "data_path": work, "checkpoint_dir": os.path.join(work, "saved"),
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "train_neg_sample_args": None, "metrics": ["NDCG", "MRR", "Recall"], "topk": [10], "valid_metric": "MRR@10",
    "epochs": epochs, "use_gpu": False, "show_progress": False, "worker": 0, "seed": 2020,
    **settings,
}
config = Config(model="SASRec", dataset="ml-100k-loo", config_dict=cfg)
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train_data, valid_data, _ = data_preparation(config, dataset)
model = SASRec(config, train_data.dataset).to(config["device"])
trainer = Trainer(config, model)

# RecBole numbers items in its own order; map both ways through the tokens (our item ids)
tokens = dataset.field2id_token["item_id"]
ours_of = np.array([int(t) if t != "[PAD]" else 0 for t in tokens])
theirs_of = {int(t): j for j, t in enumerate(tokens) if t != "[PAD]"}
with open(os.path.join(work, "histories.json")) as f:
    wanted = json.load(f)
histories, n_ours = wanted["parts"], wanted["n_items"] + 1
max_len = config["MAX_ITEM_LIST_LENGTH"]


def scores(hists: list[list[int]]) -> np.ndarray:
    """(users, n_ours) scores over our item ids; RecBole's sequences are left-aligned."""
    seq = torch.zeros(len(hists), max_len, dtype=torch.long)
    lens = torch.zeros(len(hists), dtype=torch.long)
    for r, h in enumerate(hists):
        h = [theirs_of[i] for i in h[-max_len:]]
        seq[r, :len(h)] = torch.tensor(h)
        lens[r] = len(h)
    model.eval()
    with torch.no_grad():
        theirs = (model.forward(seq, lens) @ model.item_embedding.weight.T).numpy()
    out = np.full((len(hists), n_ours), -np.inf, dtype=np.float32)
    out[:, ours_of[1:]] = theirs[:, 1:]
    return out


for epoch in range(1, epochs + 1):
    t0 = time.perf_counter()
    loss = trainer._train_epoch(train_data, epoch - 1)
    train_s = time.perf_counter() - t0
    _, result = trainer._valid_epoch(valid_data)
    for part, hists in histories.items():
        np.save(os.path.join(work, f"scores-{epoch}-{part}.npy"), scores(hists))
    print(json.dumps({"epoch": epoch, "train_s": round(train_s, 1), "loss": float(loss),
                      "recbole_valid": {k: float(v) for k, v in result.items()},
                      "load": os.getloadavg()[0]}), flush=True)
