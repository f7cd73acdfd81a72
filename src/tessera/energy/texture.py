"""Heeger-Bergen texture synthesis (SIGGRAPH 1995; notes 001: "matches intensity histograms across scales").

Start from noise; repeat a few times: decompose the image into a multi-scale
oriented pyramid, give every subband the histogram of the input texture's
same subband, rebuild the image, and give it the input's pixel histogram.

    pyr_in = analyse(texture)
    x = match(noise, texture)
    for it in 1..iters:
        pyr = analyse(x)
        pyr[k] = match(pyr[k], pyr_in[k])  for every subband k (residuals included)
        x = match(synthesise(pyr), texture)

The pyramid is the steerable pyramid of Simoncelli & Freeman (1995) built in
the Fourier domain (as pyrtools' SteerablePyramidFreq): polar masks, a
raised-cosine radial split per octave and cos^(K-1) angular bands, a tight
frame, so synthesis is the adjoint and reconstructs exactly. The Fourier
domain makes every operation circular: the output tiles without seams.
A Burt-Adelson Laplacian pyramid (circular borders) is the simpler option.
Colour goes through the input's PCA colour space (the paper, sec. 3.5): each
decorrelated channel is synthesised on its own and the result rotated back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LaplacianPyramid",
    "SteerablePyramid",
    "TextureResult",
    "match_histogram",
    "subband_distance",
    "synthesize_texture",
    "wasserstein1",
]


# ------------------------------------------------------------ histogram matching


def match_histogram(x: Tensor, reference: Tensor) -> Tensor:
    """x with the values of `reference` put in x's rank order (exact when both have the same size).

    Sorting gives each value of x its rank; the output puts the reference's
    quantile of that rank there (quantiles interpolated linearly when the sizes
    differ). The output's histogram is the reference's and its ordering x's.
    """
    flat, ref = x.reshape(-1), reference.reshape(-1).to(x.dtype)
    ref_sorted = ref.sort().values
    order = flat.argsort()
    if ref_sorted.numel() == flat.numel():
        values = ref_sorted
    else:  # quantile (k + 0.5) / n of the reference, k = 0..n-1
        q = (torch.arange(flat.numel(), dtype=x.dtype, device=x.device) + 0.5) / flat.numel()
        pos = (q * ref_sorted.numel() - 0.5).clamp(0, ref_sorted.numel() - 1)
        lo = pos.floor().long()
        hi = (lo + 1).clamp(max=ref_sorted.numel() - 1)
        values = torch.lerp(ref_sorted[lo], ref_sorted[hi], pos - lo)
    out = torch.empty_like(flat)
    out[order] = values
    return out.reshape(x.shape)


def wasserstein1(a: Tensor, b: Tensor, num_quantiles: int = 1024) -> float:
    """W1 between the empirical distributions of a and b: the mean |quantile difference| on a common grid."""
    q = (torch.arange(num_quantiles, dtype=torch.float64) + 0.5) / num_quantiles
    qa = torch.quantile(a.reshape(-1).double(), q)
    qb = torch.quantile(b.reshape(-1).double(), q)
    return float((qa - qb).abs().mean())


# ------------------------------------------------------------ steerable pyramid


def _polar_grid(h: int, w: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """log2 radius and angle of the centred (fftshifted) frequency grid in units of the Nyquist frequency.

    As pyrtools: frequency -1 + 2k / n on each axis; the DC radius is set to its neighbour's (log 0).
    """
    fy = torch.linspace(-1, 1, h + 1, dtype=dtype)[:-1]
    fx = torch.linspace(-1, 1, w + 1, dtype=dtype)[:-1]
    yy, xx = torch.meshgrid(fy, fx, indexing="ij")
    rad = (xx.square() + yy.square()).sqrt()
    cy, cx = h // 2, w // 2
    rad[cy, cx] = rad[cy, cx - 1]
    return rad.log2(), torch.atan2(yy, xx)


def _high(log_rad: Tensor, shift: float) -> Tensor:
    """Radial highpass: 1 above radius 2^-shift, 0 below 2^-(shift+1), cos(pi/2 t) between (t in log2 radius)."""
    t = (log_rad + shift).clamp(-1.0, 0.0)
    return torch.cos(math.pi / 2 * t)


def _low(log_rad: Tensor, shift: float) -> Tensor:
    """The complementary lowpass: low^2 + high^2 = 1."""
    t = (log_rad + shift).clamp(-1.0, 0.0)
    return torch.sin(math.pi / 2 * t).abs()


def _crop_box(h: int, w: int) -> tuple[int, int, int, int]:
    """The central half of a centred spectrum (pyrtools' lostart / loend): (top, left, height, width)."""
    def one(n: int) -> tuple[int, int]:
        ctr = math.ceil((n + 0.5) / 2)
        lo = math.ceil((n - 0.5) / 2)
        loctr = math.ceil((lo + 0.5) / 2)
        return ctr - loctr, lo
    (t, hh), (l, ww) = one(h), one(w)
    return t, l, hh, ww


def _fft(x: Tensor) -> Tensor:
    return torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))


def _ifft(X: Tensor) -> Tensor:
    return torch.fft.ifft2(torch.fft.ifftshift(X, dim=(-2, -1))).real


class SteerablePyramid:
    """Real steerable pyramid in the Fourier domain (Simoncelli & Freeman 1995; pyrtools' SteerablePyramidFreq).

    Subbands of an image (..., H, W): a highpass residual, `num_scales` levels of
    `num_orientations` oriented bands (level l has size H / 2^l), and a lowpass
    residual. Band b of a level has the angular mask sqrt(c) cos^(K-1)(theta - pi b / K)
    with c = 2^(2(K-1)) ((K-1)!)^2 / (K (2(K-1))!), so that sum_b mask_b^2 = 1.

    Args:
        size: (H, W) of the images; both multiples of 2^num_scales and at least 2^(num_scales + 2).
        num_scales: number of oriented levels (the paper: 4).
        num_orientations: K orientations per level (the paper: 4, i.e. third-derivative filters).
    """

    def __init__(self, size: tuple[int, int], num_scales: int = 4, num_orientations: int = 4) -> None:
        H, W = size
        need = 2 ** (num_scales + 2)
        if num_scales < 1 or num_orientations < 1:
            raise ValueError(f"num_scales and num_orientations must be >= 1, got {num_scales}, {num_orientations}")
        if min(H, W) < need or H % 2**num_scales or W % 2**num_scales:
            raise ValueError(
                f"a {num_scales}-scale pyramid needs images of at least {need}x{need} pixels with sides "
                f"divisible by {2 ** num_scales}; got {H}x{W}"
            )
        self.size, self.num_scales, self.num_orientations = (H, W), num_scales, num_orientations
        K, order = num_orientations, num_orientations - 1
        const = 2 ** (2 * order) * math.factorial(order) ** 2 / (K * math.factorial(2 * order))
        dtype = torch.float64
        log_rad, angle = _polar_grid(H, W, dtype)
        self.hi0 = _high(log_rad, 0.0)  # radius > 1 (Nyquist units): the highpass residual
        self.lo0 = _low(log_rad, 0.0)
        self.himasks, self.anglemasks, self.lomasks, self.crops = [], [], [], []
        for level in range(num_scales):
            shift = level + 1.0
            self.himasks.append(_high(log_rad, shift))
            self.anglemasks.append([
                math.sqrt(const) * torch.cos(angle - math.pi * b / K) ** order for b in range(K)
            ])
            top, left, h, w = _crop_box(*log_rad.shape)
            self.crops.append((top, left, h, w))
            log_rad = log_rad[top : top + h, left : left + w]
            angle = angle[top : top + h, left : left + w]
            self.lomasks.append(_low(log_rad, shift))
        self.phase = (-1j) ** order  # (-i)^(K-1): makes every band real

    def analyse(self, x: Tensor) -> list[Tensor]:
        """Subbands of x (..., H, W): [highpass, level 0 bands 0..K-1, level 1 ..., lowpass] (float64)."""
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"this pyramid was built for {self.size[0]}x{self.size[1]} images, got {tuple(x.shape)}")
        X = _fft(x.double())
        bands = [_ifft(X * self.hi0)]
        lo = X * self.lo0
        for level in range(self.num_scales):
            for amask in self.anglemasks[level]:
                bands.append(_ifft(self.phase * lo * amask * self.himasks[level]))
            top, left, h, w = self.crops[level]
            lo = lo[..., top : top + h, left : left + w] * self.lomasks[level]
        bands.append(_ifft(lo))
        return bands

    def synthesise(self, bands: list[Tensor]) -> Tensor:
        """The image (..., H, W) from its subbands: the adjoint of `analyse`, its exact inverse."""
        K = self.num_orientations
        if len(bands) != 2 + K * self.num_scales:
            raise ValueError(f"expected {2 + K * self.num_scales} subbands, got {len(bands)}")
        lo = _fft(bands[-1])
        for level in reversed(range(self.num_scales)):
            top, left, h, w = self.crops[level]
            size = self.anglemasks[level][0].shape
            full = torch.zeros((*lo.shape[:-2], *size), dtype=lo.dtype)
            full[..., top : top + h, left : left + w] = lo * self.lomasks[level]
            for b, amask in enumerate(self.anglemasks[level]):
                full = full + _fft(bands[1 + level * K + b]) * amask * self.himasks[level] * self.phase.conjugate()
            lo = full
        return _ifft(lo * self.lo0 + _fft(bands[0]) * self.hi0)

    def band_names(self) -> list[str]:
        """'highpass', 'level{l}_band{b}', ..., 'lowpass' in `analyse` order."""
        mid = [f"level{l}_band{b}" for l in range(self.num_scales) for b in range(self.num_orientations)]
        return ["highpass", *mid, "lowpass"]


# ------------------------------------------------------------- Laplacian pyramid


class LaplacianPyramid:
    """Burt & Adelson's Laplacian pyramid with circular borders (the simpler option of the paper).

    G_0 = x, G_{l+1} = down(blur(G_l)), L_l = G_l - blur4(up(G_{l+1})); the last band is G_L.
    Reconstruction G_l = L_l + blur4(up(G_{l+1})) is exact by construction. Blur: the binomial
    [1, 4, 6, 4, 1] / 16, separable, on a torus.
    """

    def __init__(self, size: tuple[int, int], num_scales: int = 4) -> None:
        H, W = size
        need = 2 ** (num_scales + 2)
        if min(H, W) < need or H % 2**num_scales or W % 2**num_scales:
            raise ValueError(
                f"a {num_scales}-scale pyramid needs images of at least {need}x{need} pixels with sides "
                f"divisible by {2 ** num_scales}; got {H}x{W}"
            )
        self.size, self.num_scales, self.num_orientations = (H, W), num_scales, 1
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16
        self.kernel = (k[:, None] * k[None, :])[None, None]  # (1, 1, 5, 5)

    def _blur(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = F.conv2d(F.pad(x.reshape(-1, 1, *shape[-2:]), (2, 2, 2, 2), mode="circular"), self.kernel)
        return y.reshape(shape)

    def _expand(self, x: Tensor) -> Tensor:
        up = torch.zeros((*x.shape[:-2], x.shape[-2] * 2, x.shape[-1] * 2), dtype=x.dtype)
        up[..., ::2, ::2] = x
        return 4 * self._blur(up)

    def analyse(self, x: Tensor) -> list[Tensor]:
        """[L_0, ..., L_{S-1}, G_S] of x (..., H, W)."""
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"this pyramid was built for {self.size[0]}x{self.size[1]} images, got {tuple(x.shape)}")
        g, bands = x.double(), []
        for _ in range(self.num_scales):
            down = self._blur(g)[..., ::2, ::2]
            bands.append(g - self._expand(down))
            g = down
        return [*bands, g]

    def synthesise(self, bands: list[Tensor]) -> Tensor:
        """The image from [L_0, ..., G_S]."""
        g = bands[-1]
        for lap in reversed(bands[:-1]):
            g = lap + self._expand(g)
        return g

    def band_names(self) -> list[str]:
        return [f"level{l}" for l in range(self.num_scales)] + ["lowpass"]


# ------------------------------------------------------------------- synthesis


@dataclass
class TextureResult:
    """A synthesised texture and how its statistics approached the input's.

    Attributes:
        image: (C, H, W) in the input's range (float32).
        distances: mean normalised subband W1 distance after each iteration, [0] for the
            histogram-matched noise (iters + 1 values; mean over the channels).
        pixel_distance: W1 between output and input pixels, per channel (0 when the sizes match).
        seconds: wall time of the synthesis.
    """

    image: Tensor
    distances: list[float]
    pixel_distance: list[float]
    seconds: float


def subband_distance(pyr: SteerablePyramid | LaplacianPyramid, x: Tensor, reference_bands: list[Tensor]) -> float:
    """Mean over subbands of W1(band of x, band of the input) / std(band of the input)."""
    bands = pyr.analyse(x)
    return sum(
        wasserstein1(b, r) / max(float(r.std()), 1e-12) for b, r in zip(bands, reference_bands)
    ) / len(bands)


def _pyramid(kind: str, size: tuple[int, int], num_scales: int, num_orientations: int):
    if kind == "steerable":
        return SteerablePyramid(size, num_scales, num_orientations)
    if kind == "laplacian":
        return LaplacianPyramid(size, num_scales)
    raise ValueError(f"pyramid must be 'steerable' or 'laplacian', got {kind!r}")


def _pca(texture: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (C,) and orthonormal eigenvectors (C, C) of the pixel colour covariance (columns: components)."""
    pix = texture.reshape(texture.shape[0], -1).double()
    mean = pix.mean(1)
    cov = torch.cov(pix)
    _, vecs = torch.linalg.eigh(cov)
    return mean, vecs.flip(1)  # largest variance first


def synthesize_texture(
    texture: Tensor,
    size: int | tuple[int, int] = 256,
    iters: int = 5,
    seed: int = 0,
    num_scales: int = 4,
    num_orientations: int = 4,
    pyramid: Literal["steerable", "laplacian"] = "steerable",
    init: Tensor | None = None,
) -> TextureResult:
    """Heeger-Bergen synthesis of a `size` texture from an example texture (C, H, W), C = 1 or 3.

    Args:
        texture: the example, (C, H, W) float (any range), C = 1 (grey) or 3 (colour, via PCA).
        size: output side (or (H, W)); multiples of 2^num_scales.
        iters: analysis / matching / synthesis rounds (the paper: about 5).
        seed: seed of the starting noise.
        num_scales: pyramid levels (4 in the paper).
        num_orientations: orientations per level (4 in the paper).
        pyramid: "steerable" (the paper's) or "laplacian".
        init: the starting image (C, H_out, W_out) instead of noise.

    Returns:
        TextureResult with the image (C, H_out, W_out), tileable (all operations are circular).
    """
    import time

    if texture.ndim != 3 or texture.shape[0] not in (1, 3):
        raise ValueError(f"texture must be (C, H, W) with C = 1 (grey) or 3 (colour), got {tuple(texture.shape)}")
    if not texture.is_floating_point():
        raise ValueError(f"texture must be floating-point, got {texture.dtype}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    C = texture.shape[0]
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    in_pyr = _pyramid(pyramid, tuple(texture.shape[-2:]), num_scales, num_orientations)
    out_pyr = in_pyr if out_size == tuple(texture.shape[-2:]) else _pyramid(pyramid, out_size, num_scales, num_orientations)
    if init is not None and tuple(init.shape) != (C, *out_size):
        what = "greyscale" if C == 1 else "colour"
        raise ValueError(
            f"init must match the {what} texture and the output size: expected ({C}, {out_size[0]}, {out_size[1]}), "
            f"got {tuple(init.shape)}"
        )
    t0 = time.perf_counter()
    tex = texture.double()
    if C == 3:  # decorrelated PCA channels (paper sec. 3.5)
        mean, vecs = _pca(tex)
        tex = torch.einsum("cd,chw->dhw", vecs, tex - mean[:, None, None])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((C, *out_size), generator=g, dtype=torch.float64) if init is None else init.double().clone()
    if init is not None and C == 3:
        x = torch.einsum("cd,chw->dhw", vecs, x - mean[:, None, None])
    ref_bands = [in_pyr.analyse(tex[c]) for c in range(C)]
    x = torch.stack([match_histogram(x[c], tex[c]) for c in range(C)])
    per_iter = [[subband_distance(out_pyr, x[c], ref_bands[c]) for c in range(C)]]
    for _ in range(iters):
        for c in range(C):
            bands = out_pyr.analyse(x[c])
            bands = [match_histogram(b, r) for b, r in zip(bands, ref_bands[c])]
            x[c] = match_histogram(out_pyr.synthesise(bands), tex[c])
        per_iter.append([subband_distance(out_pyr, x[c], ref_bands[c]) for c in range(C)])
    pixel = [wasserstein1(x[c], tex[c]) for c in range(C)]
    if C == 3:
        x = torch.einsum("cd,dhw->chw", vecs, x) + mean[:, None, None]
    seconds = time.perf_counter() - t0
    return TextureResult(
        image=x.to(texture.dtype),
        distances=[sum(d) / C for d in per_iter],
        pixel_distance=pixel,
        seconds=seconds,
    )
