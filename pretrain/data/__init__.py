"""The data pipeline: clean → tokenizer → shards + manifest → loader."""
