"""Checkpoint state: walking nested training state into a value tree plus tensors, and back."""
