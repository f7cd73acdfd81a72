"""Energy-based models: MCMC samplers (Metropolis, Langevin, SGLD, MALA), energy networks, a replay buffer,
evaluation (grid likelihood, KDE, MMD, ESS, AUROC) and Heeger-Bergen texture synthesis. Notes 001.

    from tessera.energy import LangevinSampler, MALASampler, MetropolisSampler
    res = MALASampler(step_size=0.05).sample(lambda x: 0.5 * x.square().sum(1), torch.randn(512, 2), steps=200)
    res.x, res.acceptance

    model = tessera.create_model("ebm_mlp_2d")     # kind "energy": model.energy(x) -> (B,)
    synthesize_texture(texture, size=256, iters=5).image   # Heeger-Bergen, (C, 256, 256), tileable
"""

from tessera.energy.buffer import ReplayBuffer
from tessera.energy.evaluate import auroc, grid_log_likelihood, mmd2
from tessera.energy.models import (
    ConvEnergy,
    ConvEnergyConfig,
    MLPEnergy,
    MLPEnergyConfig,
    ebm_conv_digits,
    ebm_mlp_2d,
)
from tessera.energy.samplers import (
    ChainDivergedError,
    LangevinSampler,
    MALASampler,
    MCMCResult,
    MCMCSampler,
    MetropolisSampler,
    SGLDSampler,
    energy_and_grad,
    evaluate_energy,
)
from tessera.energy.texture import LaplacianPyramid, SteerablePyramid, synthesize_texture

__all__ = [
    "ChainDivergedError",
    "LaplacianPyramid",
    "SteerablePyramid",
    "auroc",
    "grid_log_likelihood",
    "mmd2",
    "synthesize_texture",
    "ConvEnergy",
    "ConvEnergyConfig",
    "LangevinSampler",
    "MALASampler",
    "MCMCResult",
    "MCMCSampler",
    "MLPEnergy",
    "MLPEnergyConfig",
    "MetropolisSampler",
    "ReplayBuffer",
    "SGLDSampler",
    "ebm_conv_digits",
    "ebm_mlp_2d",
    "energy_and_grad",
    "evaluate_energy",
]
