"""Video similarity to the baseline: MSE, PSNR and SSIM (pure functions on [F, H, W, 3] arrays).

Values are computed on pixels scaled to [0, 1]; SSIM uses the usual 11-tap Gaussian window
(sigma 1.5) on each channel of each frame and averages. PSNR of identical videos is ``inf``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _unit(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [F, H, W, 3] or float in [0, 1] -> float64 tensor [F, 3, H, W] in [0, 1]."""
    x = torch.as_tensor(np.asarray(video))
    x = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
    return x.permute(0, 3, 1, 2)


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def mse(a, b) -> float:
    x, y = _unit(a), _unit(b)
    _check(x, y)
    return float(((x - y) ** 2).mean())


def psnr(a, b) -> float:
    error = mse(a, b)
    return math.inf if error == 0 else 10 * math.log10(1.0 / error)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(a, b) -> float:
    """Mean SSIM over frames and channels (constants for a data range of 1)."""
    x, y = _unit(a), _unit(b)
    _check(x, y)
    frames, channels, height, width = x.shape
    size = min(11, height, width)
    window = _gaussian_window(size).expand(channels, 1, size, size)
    c1, c2 = 0.01**2, 0.03**2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(score.mean())


def compare_videos(a, b) -> dict[str, float]:
    return {"mse": mse(a, b), "psnr": psnr(a, b), "ssim": ssim(a, b)}
