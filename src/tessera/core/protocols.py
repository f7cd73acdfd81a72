"""The kinds of model the registry builds, and what each promises (its protocol).

One place, read by `register_model` (a kind must be one of these) and by the
registry-wide contract tests (tests/test_contract.py), which check every
promise below on the tiny variant of every registered name.

Every kind also has: a frozen config dataclass in `model.config` that rejects
unknown fields, `save_pretrained(folder)` -> `model.safetensors` + `config.json`
that `create_model(name, checkpoint=folder)` reads back, derived buffers kept out
of the checkpoint, `set_grad_checkpointing(enable=True)`, and
`example_inputs(batch_size)`: positional inputs of the right shapes for a
smoke run (tests, `tessera info`, `profile`).
"""

from __future__ import annotations

KINDS: dict[str, str] = {
    "classifier": (
        "forward(x: (B, C, H, W)) -> logits (B, num_classes); forward_features(x); "
        "forward_head(features, pre_logits=False) -> (B, num_classes) or (B, num_features); "
        "reset_classifier(num_classes); a classifier backbone is also an `encoder`."
    ),
    "encoder": (
        "forward_tokens(x, mask=None) -> (B, N, C): mask is a (B, N_patches) bool tensor whose True "
        "positions get the learned mask token instead of their patch embedding; "
        "forward_intermediates(x, indices=None, norm=False) -> [(B, C_i, H_i, W_i)] one map per index "
        "(prefix tokens dropped; `return_prefix_tokens=True` also gives them); "
        "feature_info: [{'num_chs', 'reduction', 'module'}] one per possible index; "
        "num_prefix_tokens (class / distillation / register tokens before the patches); "
        "patch_size (the input stride of one token)."
    ),
    "denoiser": (
        "forward(x_t: (B, C, H, W), t: (B,) or scalar, cond=None) -> tensor shaped like x_t "
        "(eps, x0 or v, as the model's config says); cond is class labels (B,) or a context (B, M, D)."
    ),
    "tokenizer": (
        "encode(x: (B, C, H, W)) -> latents (B, D, H/f, W/f) or a record with codes (B, H/f, W/f); "
        "decode(latents or codes) -> (B, C, H, W); forward(x) -> a record with the reconstruction "
        "(B, C, H, W) and its losses (scalars)."
    ),
    "energy": "energy(x) -> (B,): the unnormalised negative log-density E_theta(x); forward(x) = energy(x).",
    "dense": (
        "forward(x: (B, C, H, W)) -> (B, K, H, W) class logits (segmentation) or (B, 1, H, W) "
        "depth (non-negative), at the input resolution."
    ),
    "wrapper": (
        "a system around any registered encoder (SimMIM, DINO, CoCa, ...), using only the encoder "
        "protocol; forward(*example_inputs) -> a record whose `loss` is a finite scalar."
    ),
}
