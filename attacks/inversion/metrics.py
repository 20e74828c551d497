"""How well a reconstruction recovers the client's examples (metrics only: the attack never
sees the ground truth).

Images are mapped to [0, 1] and clamped first; reconstructions are assigned to the true
examples by the Hungarian algorithm on pixel MSE (``scipy.optimize.linear_sum_assignment``;
breaching matches by LPIPS, unavailable offline). Per image:

* PSNR = 10·log10(1 / MSE) (scikit-image ``peak_signal_noise_ratio``, data range 1);
* SSIM (Wang et al. 2004, scikit-image ``structural_similarity``, K1 0.01, K2 0.03,
  population covariance): the Gaussian window σ = 1.5 (11 taps) where the image side is
  at least 11, else a uniform 3×3 window (8×8 digits: an 11-tap or even 7×7 window would
  leave at most 2×2 valid positions);
* label accuracy: the share of true labels matched by the inferred multiset of labels.

LPIPS needs pretrained AlexNet/VGG trunk weights, which are downloads; it is reported as
unavailable rather than computed with a random trunk (a different metric).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fedsim import atomic

LPIPS_STATUS = "unavailable offline (needs pretrained AlexNet/VGG weights; not substituted)"


def to_unit(images: torch.Tensor, pixel_range: tuple[float, float]) -> np.ndarray:
    lo, hi = pixel_range
    return ((images.detach().float() - lo) / (hi - lo)).clamp(0, 1).cpu().numpy().astype(np.float64)


def psnr(rec: np.ndarray, truth: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(truth, rec, data_range=1.0))


def ssim(rec: np.ndarray, truth: np.ndarray) -> float:
    """SSIM of two (C, H, W) images in [0, 1] (window: see the module docstring)."""
    from skimage.metrics import structural_similarity

    side = min(truth.shape[-2:])
    window = {"gaussian_weights": True, "sigma": 1.5} if side >= 11 else {"win_size": 3}
    return float(
        structural_similarity(truth, rec, data_range=1.0, channel_axis=0, use_sample_covariance=False, **window)
    )


def match(rec: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """order[j] = index of the reconstruction assigned to true example j (min total MSE)."""
    from scipy.optimize import linear_sum_assignment

    cost = ((rec[:, None] - truth[None]) ** 2).reshape(len(rec), len(truth), -1).mean(-1)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(truth), dtype=np.int64)
    order[cols] = rows
    return order


def label_accuracy(inferred: torch.Tensor, true: torch.Tensor) -> float:
    """|multiset(inferred) ∩ multiset(true)| / |true| (labels carry no order)."""
    common = Counter(inferred.tolist()) & Counter(true.tolist())
    return sum(common.values()) / len(true)


def score(
    images: torch.Tensor,
    labels: torch.Tensor,
    truth_x: torch.Tensor,
    truth_y: torch.Tensor,
    pixel_range: tuple[float, float],
) -> dict:
    """Mean and max PSNR, mean SSIM and label accuracy of a reconstruction; ``order`` aligns
    the reconstructions with the truth for display."""
    rec, truth = to_unit(images, pixel_range), to_unit(truth_x, pixel_range)
    order = match(rec, truth)
    psnrs = [psnr(rec[order[j]], truth[j]) for j in range(len(truth))]
    ssims = [ssim(rec[order[j]], truth[j]) for j in range(len(truth))]
    return {
        "psnr": float(np.mean(psnrs)),
        "psnr_max": float(np.max(psnrs)),
        "ssim": float(np.mean(ssims)),
        "label_acc": label_accuracy(labels, truth_y),
        "order": order,
    }


def save_grid(path: Path, rows: list[tuple[str, torch.Tensor]], pixel_range: tuple[float, float], title: str = "") -> None:
    """A PNG with one row of images per (label, images (N, C, H, W)) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols + 1.6, 1.15 * len(rows) + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows):
        pics = to_unit(images, pixel_range)
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(pics):
                pic = pics[c]
                ax.imshow(pic[0] if pic.shape[0] == 1 else pic.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, dpi=80, format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)
