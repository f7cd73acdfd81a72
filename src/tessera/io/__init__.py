"""Checkpoints: safetensors save/load and converters from foreign layouts."""

from tessera.io.checkpoint import CheckpointError, load_checkpoint, read_state_dict

__all__ = ["CheckpointError", "load_checkpoint", "read_state_dict"]
