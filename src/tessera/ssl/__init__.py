"""Self-supervised wrappers around any registered encoder (SimMIM, DINO, DINOv2).

Each module registers its names (kind "wrapper") when imported; the registry
imports this package. Evaluation (k-NN, linear probe) is in `tessera.eval`,
training in `tessera.train.ssl`.
"""

from tessera.ssl import simmim  # noqa: F401  (registers simmim_*)
from tessera.ssl import dino  # noqa: F401  (registers dino_*)
from tessera.ssl import dinov2  # noqa: F401  (registers dinov2_*)
from tessera.ssl import coca  # noqa: F401  (registers coca_*)
