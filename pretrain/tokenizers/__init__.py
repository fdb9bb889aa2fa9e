"""SentencePiece training and the tokenizer wrapper (with its card)."""
