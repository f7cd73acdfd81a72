"""ViT (Dosovitskiy et al., 2021) and DeiT (Touvron et al., 2021). Filled in by issue 3."""
