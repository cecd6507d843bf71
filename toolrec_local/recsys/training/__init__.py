"""Training, shared by the backbones and the attribute tools: one loop (train.py), early
stopping (stopping.py), the per-epoch progress line (progress.py; P5 uses it too), and whole
runs that reuse valid checkpoints (pipeline.py)."""
