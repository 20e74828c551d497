"""Label inference from the last layer's gradient (a leakage channel of its own).

For cross-entropy with mean reduction over a batch of B, the last layer's bias gradient is
∂L/∂b_c = (1/B)·Σ_i (p_ic − [y_i = c]) and its weight gradient row c is
(1/B)·Σ_i (p_ic − [y_i = c])·h_i, with h_i ≥ 0 after a ReLU: classes present in the batch
pull their entries negative.

* ``idlg`` (Zhao et al. 2020, iDLG): B = 1, the class whose weight-row sum is negative
  (the argmin).
* ``yin`` (Yin et al., CVPR 2021, GradInversion Sec. 3.2): the B classes with the most
  negative minimum over the row; unique labels.
* ``bias-corrected`` (Wainakh et al. 2022 LLG; breaching's default): every class with a
  negative entry once (the B most negative if more), then, while fewer than B labels, the
  argmin class again; each time a class is taken its entry is raised by the mean impact
  of one example, |m| with m = Σ_{negative entries} / B.

* ``probe`` (for models without a class-output layer in the upload, e.g. HyperFL's φ
  seen by the informed attacker; one example): the class c whose replayed upload at a
  mid-grey probe image, with label c, has the highest cosine similarity to the observed
  upload. The cross-entropy's (p − e_y) factor dominates the direction of the update.
  ``auto`` falls back to it where no class-output layer exists.

Entries are the bias gradient where the last layer has a bias, else the weight-row sums.
For a FedAvg update Δθ ≈ −η·Σ_t g_t the pseudo-gradient −Δθ is used. Labels are returned
sorted (the order of a batch is not observable).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from fedsim.attacks.inversion.observation import Observation
from fedsim.attacks.inversion.replay import compute_upload

LabelRule = Literal["auto", "idlg", "yin", "bias-corrected", "probe"]


def last_layer(obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (pseudo-)gradient of the last classification layer: weight (C, D) and bias (C,) or None."""
    names = [n for n, _ in obs.model.named_parameters()]
    sign = -1.0 if obs.kind == "update" else 1.0
    weight_name = next(
        (n for n in reversed(names) if obs.upload[n].dim() == 2 and obs.upload[n].shape[0] == obs.num_classes), None
    )
    if weight_name is None:
        raise ValueError("no last layer with one output per class: labels cannot be inferred")
    bias_name = weight_name[: -len("weight")] + "bias" if weight_name.endswith("weight") else None
    bias = obs.upload.get(bias_name) if bias_name else None
    return sign * obs.upload[weight_name], None if bias is None else sign * bias


def has_class_layer(obs: Observation) -> bool:
    return any(u.dim() == 2 and u.shape[0] == obs.num_classes for u in obs.upload.values())


def probe_label(obs: Observation, count: int) -> torch.Tensor:
    """The class whose upload at a mid-grey probe image best matches the observed one (cosine)."""
    if count != 1:
        raise ValueError("the probe rule infers the label of a single example")
    net = obs.fresh_model().eval()
    params = {n: p.detach().requires_grad_() for n, p in net.named_parameters()}
    probe = torch.full((1, *obs.input_shape), sum(obs.pixel_range) / 2)
    observed = torch.cat([obs.upload[n].reshape(-1) for n in params])
    sims = []
    for c in range(obs.num_classes):
        upload = compute_upload(net, params, probe, torch.tensor([c]), obs.kind, obs.local)
        sims.append(F.cosine_similarity(torch.cat([upload[n].reshape(-1) for n in params]), observed, 0))
    return torch.stack(sims).argmax().reshape(1)


def infer_labels(obs: Observation, count: int, rule: LabelRule = "auto") -> torch.Tensor:
    """``count`` labels for the examples behind ``obs`` (sorted)."""
    if rule == "probe" or (rule == "auto" and not has_class_layer(obs)):
        return probe_label(obs, count)
    weight, bias = last_layer(obs)
    if rule == "auto":
        rule = "idlg" if count == 1 else "bias-corrected"
    if rule == "idlg":
        if count != 1:
            raise ValueError("iDLG infers the label of a single example")
        return weight.sum(1).argmin().reshape(1)
    if rule == "yin":
        if count > obs.num_classes:
            raise ValueError(f"the yin rule needs unique labels: batch {count} > {obs.num_classes} classes")
        return weight.min(1).values.argsort()[:count].sort().values
    entries = (bias if bias is not None else weight.sum(1)).detach().clone()
    negative = torch.nonzero(entries < 0).flatten()
    labels = [int(c) for c in negative[entries[negative].argsort()][:count]]
    impact = entries[entries < 0].sum() / count
    for c in labels:
        entries[c] -= impact
    while len(labels) < count:
        c = int(entries.argmin())
        labels.append(c)
        entries[c] -= impact
    return torch.tensor(sorted(labels), dtype=torch.int64)
