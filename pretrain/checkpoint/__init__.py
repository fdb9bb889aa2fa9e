"""Checkpoints: DeepSpeed's engine state plus our trainer state, committed by a `latest` pointer."""
