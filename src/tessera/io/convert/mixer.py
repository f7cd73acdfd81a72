"""Checkpoint converter for the mixer family (filled in by its issue)."""
