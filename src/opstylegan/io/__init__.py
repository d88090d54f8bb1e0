"""Checkpoints (safetensors + JSON, never pickles) and atomic file writes."""
