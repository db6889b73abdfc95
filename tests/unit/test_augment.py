"""On-the-fly augmentation of duplicated rows (Lee et al.'s noise / transform over-sampling):
the transforms against closed forms, the copy numbering, and the reader applying them to
duplicates only (every original row read unchanged)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from pipeline.stream.augment import augment_batch, augment_spec, copy_numbers
from pipeline.data.schema import read_info
from pipeline.errors import ConfigError
from pipeline.stream.readers import make_loader
from tests.integration.test_stream import write_image_table


def test_copy_numbers_match_a_plain_loop():
    m = [0, 3, 1, 0, 2]
    want = [c for k in m for c in range(k)]
    assert copy_numbers(np.array(m)).tolist() == want == [0, 1, 2, 0, 0, 1]


def test_noise_has_the_configured_spread_and_is_seeded():
    x = torch.full((400, 1, 8, 8), 128, dtype=torch.uint8)
    spec = augment_spec({"kind": "noise", "sigma": 0.04})
    a = augment_batch(x, spec, torch.Generator().manual_seed(1), image=True)
    b = augment_batch(x, spec, torch.Generator().manual_seed(1), image=True)
    assert torch.equal(a, b) and a.dtype == torch.uint8
    d = a.float() - 128
    assert abs(d.mean().item()) < 0.2 and d.std().item() == pytest.approx(0.04 * 255, rel=0.05)
    f = augment_batch(torch.zeros(1000, 6), augment_spec({"kind": "noise", "sigma": 0.5}),
                      torch.Generator().manual_seed(0), image=False)
    assert f.std().item() == pytest.approx(0.5, rel=0.05)


def test_affine_identity_and_exact_flip():
    x = torch.randint(0, 256, (5, 1, 6, 7), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    ident = augment_spec({"kind": "affine", "degrees": 0, "scale": 0, "translate": 0, "flip": 0})
    assert torch.equal(augment_batch(x, ident, g, image=True), x)
    flip = augment_spec({"kind": "affine", "degrees": 0, "scale": 0, "translate": 0, "flip": 1})
    assert torch.equal(augment_batch(x, flip, g, image=True), torch.flip(x, dims=[3]))
    rot = augment_batch(x, augment_spec("affine"), g, image=True)    # defaults: a real change, same shape
    assert rot.shape == x.shape and not torch.equal(rot, x)


def test_bad_augment_configs_name_the_key():
    with pytest.raises(ConfigError, match="augment.kind"):
        augment_spec({"kind": "mixup"})
    with pytest.raises(ConfigError, match="augment.sigmaa"):
        augment_spec({"kind": "noise", "sigmaa": 1})
    with pytest.raises(ConfigError, match="augment.flip"):
        augment_spec({"kind": "affine", "flip": 2})
    with pytest.raises(ConfigError, match="image data"):
        augment_batch(torch.zeros(2, 3), augment_spec("affine"), torch.Generator(), image=False)
    assert augment_spec(None) is None


def test_reader_augments_duplicates_only(tmp_path):
    truth = write_image_table(tmp_path / "t", [120, 80], shape=(6, 6), n_classes=3, seed=3)
    info = read_info(str(tmp_path / "t"))
    rates = [2.0, 1.0, 3.5]                        # class 1: every row once; 0 and 2: duplicated
    loader = make_loader(str(tmp_path / "t"), info, 0, 1, 32, epoch=0, seed=5, with_ids=True, raw=True,
                         rates=rates, sample_seed=5, augment=augment_spec({"kind": "noise", "sigma": 0.2}))
    seen = Counter()
    originals = Counter()
    for x, y, ids, fill in loader:
        for img, i, f in zip(x, ids.tolist(), fill.tolist()):
            if f:
                continue
            seen[i] += 1
            lab, want = truth[i]
            if np.array_equal(img.numpy().reshape(want.shape), want):
                originals[i] += 1
            else:
                assert lab != 1                          # class 1 is never duplicated, so never changed
    assert set(seen) <= set(truth)
    for i, k in seen.items():
        assert originals[i] == 1, (i, k, originals[i])   # exactly one unchanged copy of every row read
    dup = [i for i, k in seen.items() if k > 1]
    assert dup and all(truth[i][0] != 1 for i in dup)
