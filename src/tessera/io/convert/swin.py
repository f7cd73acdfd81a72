"""Checkpoint converter for the swin family (filled in by its issue)."""
