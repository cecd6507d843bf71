"""The sequence backbones: SASRec (sasrec.py), BERT4Rec (bert4rec.py), the Transformer they
share (transformer.py), padded batches and training windows (sequences.py), and the *-bert
variants' frozen item text features (text_items.py, text_features.py)."""
