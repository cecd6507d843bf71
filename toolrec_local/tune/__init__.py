"""`toolrec-local tune`: a local LLM LoRA-tuned as the score ranker (samples, training, the saved model)."""
