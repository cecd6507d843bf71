"""The retrieval tools: sequence backbones, the attribute tools trained on them, and P5.

- sequence/   SASRec, BERT4Rec and their *-bert variants (item text features), on one Transformer
- attributes/ the attribute encoders, their word vectors, the RetrievalTool the agent calls
- training/   the one training loop for backbones and tools, early stopping, whole runs
- p5/         the P5 generative recommender: model, training, its CLI command
Shared by them here: config.py (settings and presets), checkpoint.py, device.py, models.py
(building a backbone, scoring with a backbone and a tool), evaluate.py, commands.py (the CLI).
"""
