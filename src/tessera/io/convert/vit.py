"""Checkpoint converter for the vit family (filled in by its issue)."""
