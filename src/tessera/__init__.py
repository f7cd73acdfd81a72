"""tessera: vision transformers and generative image models on PyTorch."""

from tessera.core import KINDS, create_model, list_models, model_kinds, register_model
from tessera.inference import optimize_for_inference
from tessera.profile import profile

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "create_model",
    "list_models",
    "model_kinds",
    "optimize_for_inference",
    "profile",
    "register_model",
    "__version__",
]
