"""The P5 generative recommender: the model and its prompt (model.py), training, checkpoint
and the recommender `eval` loads (train.py), and `toolrec-local train p5` (command.py)."""
