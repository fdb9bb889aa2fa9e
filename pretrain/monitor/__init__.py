"""Metrics: the run's metrics.jsonl, stdout lines and Weights & Biases."""
