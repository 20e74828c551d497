"""GIFD's generative prior, trained offline: a small VAE decoder on public images.

GIFD (Fang et al., ICCV 2023) inverts through a pretrained GAN (BigGAN, StyleGAN2) whose
weights are downloads. fedsim trains its own prior instead, on a public split disjoint
from every client's data: the task dataset's held-out test split (in-distribution) or
another dataset's images (out-of-distribution). Small GANs mode-collapse on a CPU budget,
so the prior is the decoder of a VAE (Kingma & Welling 2014; β-VAE loss with β = 1) with
GIFD's block structure: z → h_1 (w×2×2) → h_2 (w/2×4×4) → … → h_K (S×S) → 3×3 conv →
sigmoid, each up-block ConvTranspose(4, stride 2)-BatchNorm-ReLU. ``forward(h, start=k)``
runs blocks k.. from an injected feature, which is what GIFD's stages optimise.

Before use a prior must pass the diversity gate: the mean pairwise distance of its samples
relative to real images', and the share of near-duplicate sample pairs beyond the real
images' own share (collapsed priors, whose samples coincide, are refused). Trained priors are cached on disk by a hash of everything that determines
them and loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.training import derive_seed, torch_generator


class PriorCollapsed(ValueError):
    """A prior whose samples are not diverse enough to be used."""


@dataclass(frozen=True)
class PriorConfig:
    latent: int = 32
    width: int = 64
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    beta: float = 1.0
    seed: int = 0


def _side(hw: tuple[int, int]) -> int:
    """The generator's native side: the smallest power of two ≥ the image side (≥ 4)."""
    return max(4, 2 ** math.ceil(math.log2(max(hw))))


class _Resize(nn.Module):
    def __init__(self, hw: tuple[int, int]):
        super().__init__()
        self.hw = tuple(hw)

    def forward(self, x):
        return x if tuple(x.shape[-2:]) == self.hw else F.interpolate(x, size=self.hw, mode="area")


class DecoderPrior(nn.Module):
    """G = G_{N−1} ∘ … ∘ G_0; ``forward(h, start=k)`` = G_{N−1} ∘ … ∘ G_k(h)."""

    def __init__(self, latent: int, width: int, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width_px = image_shape
        side = _side((height, width_px))
        self.latent = latent
        blocks: list[nn.Module] = [
            nn.Sequential(nn.Linear(latent, width * 4), nn.BatchNorm1d(width * 4), nn.ReLU(), nn.Unflatten(1, (width, 2, 2)))
        ]
        c, s, k = width, 2, 1
        while s < side:
            out = max(width // 2**k, 16)
            blocks.append(nn.Sequential(nn.ConvTranspose2d(c, out, 4, 2, 1), nn.BatchNorm2d(out), nn.ReLU()))
            c, s, k = out, 2 * s, k + 1
        blocks.append(nn.Sequential(nn.Conv2d(c, channels, 3, padding=1), nn.Sigmoid(), _Resize((height, width_px))))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, h: torch.Tensor, start: int = 0) -> torch.Tensor:
        for block in self.blocks[start:]:
            h = block(h)
        return h

    def feature(self, z: torch.Tensor, stage: int) -> torch.Tensor:
        """h_stage: the input of block ``stage`` (h_0 = z)."""
        for block in self.blocks[:stage]:
            z = block(z)
        return z


class _Encoder(nn.Module):
    def __init__(self, latent: int, width: int, image_shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width_px = image_shape
        side = _side((height, width_px))
        layers: list[nn.Module] = [_Resize((side, side))]
        c, out, s = channels, 16, side
        while s > 2:  # stride-2 convolutions down to 2×2, mirroring the decoder
            layers += [nn.Conv2d(c, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            c, out, s = out, min(2 * out, width), s // 2
        layers += [nn.Flatten(), nn.Linear(c * 4, 2 * latent)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        mu, logvar = self.net(x).chunk(2, dim=1)
        return mu, logvar


def train_prior(images: torch.Tensor, cfg: PriorConfig) -> DecoderPrior:
    """Train a VAE on ``images`` (N, C, H, W) in [0, 1]; return its decoder in eval mode.

    Loss per example: BCE(G(z), x) summed over pixels + β·KL(q(z|x) ‖ N(0, I)), z by the
    reparameterisation trick; Adam; minibatches drawn with replacement from a seeded stream.
    """
    shape = tuple(images.shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "prior-init"))
        decoder = DecoderPrior(cfg.latent, cfg.width, shape)
        encoder = _Encoder(cfg.latent, cfg.width, shape)
    gen = torch_generator(cfg.seed, "prior-train")
    opt = torch.optim.Adam([*decoder.parameters(), *encoder.parameters()], lr=cfg.lr)
    decoder.train()
    for _ in range(cfg.steps):
        x = images[torch.randint(len(images), (cfg.batch_size,), generator=gen)]
        mu, logvar = encoder(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen)
        recon = F.binary_cross_entropy(decoder(z), x, reduction="sum") / len(x)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() / len(x)
        opt.zero_grad(set_to_none=True)
        (recon + cfg.beta * kl).backward()
        opt.step()
    return decoder.eval().requires_grad_(False)


def diversity(decoder: DecoderPrior, real: torch.Tensor, n: int = 256, seed: int = 0) -> dict[str, float]:
    """``ratio``: mean pairwise L2 distance of n samples / that of n real images;
    ``duplicates`` (``real_duplicates``): share of sample (real) pairs closer than 10 % of the
    real mean distance."""
    gen = torch_generator(seed, "prior-diversity")
    with torch.no_grad():
        samples = decoder(torch.randn(n, decoder.latent, generator=gen)).flatten(1)
    pick = torch.randperm(len(real), generator=gen)[:n]
    real_pairs = torch.pdist(real[pick].flatten(1))
    real_d = real_pairs.mean()
    sample_d = torch.pdist(samples)
    return {
        "ratio": float(sample_d.mean() / real_d),
        "duplicates": float((sample_d < 0.1 * real_d).float().mean()),
        "real_duplicates": float((real_pairs < 0.1 * real_d).float().mean()),
    }


def check_diversity(stats: dict[str, float], min_ratio: float, max_duplicates: float) -> None:
    """Refuse a prior whose samples spread less than ``min_ratio`` of the real data's, or
    whose share of near-duplicate pairs exceeds the real data's by more than ``max_duplicates``."""
    excess = stats["duplicates"] - stats["real_duplicates"]
    if stats["ratio"] < min_ratio or excess > max_duplicates:
        raise PriorCollapsed(
            f"prior refused: sample diversity {stats['ratio']:.3f} of real data's (need ≥ {min_ratio}), "
            f"near-duplicate pairs {stats['duplicates']:.3f} vs real {stats['real_duplicates']:.3f} "
            f"(excess must be ≤ {max_duplicates})"
        )


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDSIM_CACHE", Path.home() / ".cache" / "fedsim")) / "priors"


def load_or_train(
    images: torch.Tensor,
    source: dict,
    cfg: PriorConfig,
    cache_dir: Path,
    min_ratio: float = 0.5,
    max_duplicates: float = 0.1,
) -> tuple[DecoderPrior, dict]:
    """The decoder prior for (``source`` description of the images, ``cfg``), from the cache
    or trained and cached; refused (``PriorCollapsed``) unless it passes the diversity gate.

    Returns the decoder and a report: source, config, diversity, cache file.
    """
    spec = {"source": source, "shape": list(images.shape[1:]), "count": len(images), "config": asdict(cfg)}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"decoder-{key}.pt"
    decoder = DecoderPrior(cfg.latent, cfg.width, tuple(images.shape[1:]))
    if path.exists():
        blob = torch.load(path, weights_only=True)
        decoder.load_state_dict(blob["state_dict"])
        decoder.eval().requires_grad_(False)
    else:
        decoder = train_prior(images, cfg)
    stats = diversity(decoder, images, seed=cfg.seed)
    check_diversity(stats, min_ratio, max_duplicates)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"state_dict": decoder.state_dict(), "spec": json.dumps(spec)}, tmp)
        tmp.replace(path)
    return decoder, {**spec, "diversity": stats, "file": str(path)}


def to_shape(images: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """Images (N, C', H', W') in [0, 1] as (N, C, H, W): grey↔RGB by mean/repeat, area/bilinear resize."""
    x = torch.as_tensor(images, dtype=torch.float32)
    channels, height, width = shape
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True)
        x = x.expand(-1, channels, -1, -1).contiguous()
    if tuple(x.shape[-2:]) != (height, width):
        smaller = x.shape[-2] >= height
        x = F.interpolate(x, size=(height, width), mode="area" if smaller else "bilinear", align_corners=None if smaller else False)
    return x.clamp(0, 1)
