"""Evaluation metrics as functions (retrieval, captioning, ...)."""
