"""MLP-Mixer (Tolstikhin et al., 2021). Filled in by issue 3."""
