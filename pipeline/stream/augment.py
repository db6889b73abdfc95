"""On-the-fly augmentation of duplicated rows in the streaming reader (Lee et al.'s (B)/(C)/(E)/(F)).

Lee et al. (survey "Two-phase learning", Table 5) over-sample minority plankton classes until every
class has at least 1,000 images, making the duplicates differ from their originals either by
**noise injection** (B) or by **rotation, scaling, translation and flipping** (C). Here this is
done at read time: with ``train.read_sampling`` (e.g. ``{strategy: floor, floor: 1000, augment:
{kind: noise}}``) the Petastorm reader emits a row ``m`` times; copy 0 is the original and every
further copy (copy number ≥ 1) is augmented as it is read, so no duplicate is written to disk.

``augment`` (a mapping; ``kind`` required):

``noise``
    x' = clip(x + ε, 0, 255), ε ~ N(0, (σ·255)²) per pixel; ``sigma`` (default 0.05). Feature
    tables: x' = x + ε, ε ~ N(0, σ²) per feature.
``affine`` (images only)
    a random similarity transform about the image centre: rotation θ ~ U(−degrees, degrees)
    (default 15), scale s ~ U(1 − scale, 1 + scale) (default 0.1), translation t ~ U(−translate,
    translate)·size per axis (default 0.1), then a horizontal flip with probability ``flip``
    (default 0.5); bilinear sampling, zero padding (``torch.nn.functional.grid_sample``).

The random draws come from the reader's seeded generator, so an epoch is reproducible given
the seed; everything is batched tensor work.

References:

* H. Lee, M. Park, J. Kim, "Plankton classification on imbalanced large scale database via
  convolutional neural networks with transfer learning", ICIP 2016,
  https://doi.org/10.1109/ICIP.2016.7533053
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from pipeline.errors import ConfigError

KINDS = {"noise": {"sigma": 0.05}, "affine": {"degrees": 15.0, "scale": 0.1, "translate": 0.1, "flip": 0.5}}


def augment_spec(raw, where: str = "train.read_sampling.augment") -> Optional[dict]:
    """Normalise ``augment`` (None, a kind name, or a mapping) into ``{kind, **params}``; ConfigError naming the key."""
    if raw is None or raw is False:
        return None
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}' must be a kind ({', '.join(KINDS)}) or a mapping, got {raw!r}")
    kind = str(raw.get("kind", "")).lower()
    if kind not in KINDS:
        raise ConfigError(f"config key '{where}.kind': expected one of {', '.join(KINDS)}, got {raw.get('kind')!r}")
    spec = {"kind": kind, **KINDS[kind]}
    for k, v in raw.items():
        if k == "kind":
            continue
        if k not in KINDS[kind]:
            raise ConfigError(f"unknown config key '{where}.{k}' for kind {kind} (known: {', '.join(KINDS[kind])})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"config key '{where}.{k}': expected a number >= 0, got {v!r}")
        spec[k] = float(v)
    if kind == "affine" and spec["flip"] > 1:
        raise ConfigError(f"config key '{where}.flip': a probability in [0, 1], got {spec['flip']}")
    return spec


def augment_batch(x: torch.Tensor, spec: dict, gen: torch.Generator, image: bool) -> torch.Tensor:
    """Augmented copies of the rows of ``x`` (uint8 images (N, C, H, W) or float features (N, d))."""
    if len(x) == 0:
        return x
    if spec["kind"] == "noise":
        eps = torch.randn(x.shape, generator=gen)
        if image:
            return (x.float() + eps * (spec["sigma"] * 255.0)).round().clamp_(0, 255).to(torch.uint8)
        return (x.float() + eps * spec["sigma"]).to(x.dtype)
    if not image:
        raise ConfigError("train.read_sampling.augment: kind 'affine' needs image data (use 'noise' for features)")
    n = len(x)
    theta = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(spec["degrees"])
    s = 1 + (torch.rand(n, generator=gen) * 2 - 1) * spec["scale"]
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * spec["translate"] * 2  # grid units: the image spans [-1, 1]
    flip = torch.where(torch.rand(n, generator=gen) < spec["flip"], -1.0, 1.0)
    cos, sin = torch.cos(theta) / s, torch.sin(theta) / s
    mat = torch.stack([torch.stack([cos * flip, -sin, t[:, 0]], 1), torch.stack([sin * flip, cos, t[:, 1]], 1)], 1)
    grid = torch.nn.functional.affine_grid(mat, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp_(0, 255).to(torch.uint8)


def copy_numbers(multiplicity) -> torch.Tensor:
    """For rows repeated ``multiplicity[i]`` times in order, each emitted row's copy number (0 = original)."""
    m = torch.as_tensor(multiplicity, dtype=torch.long)
    total = int(m.sum())
    starts = torch.cumsum(m, 0) - m
    return torch.arange(total) - torch.repeat_interleave(starts, m)


__all__ = ["augment_spec", "augment_batch", "copy_numbers", "KINDS"]
