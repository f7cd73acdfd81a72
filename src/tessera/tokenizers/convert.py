"""Checkpoint layouts of tokenizers from elsewhere (diffusers, taming-transformers); filled in below."""

from __future__ import annotations
