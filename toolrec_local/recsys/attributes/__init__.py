"""The attribute tools on a frozen backbone: the encoder (attribute.py), the word vectors of
text values (word_vectors.py), the RetrievalTool the agent calls (retrieval.py), and their
parameter and FLOP accounting (accounting.py)."""
