"""Models: shapes for every model and input kind, the deep-feature interface, ResNet sizes, training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import ModelSection, load_config
from pipeline.errors import InputError
from pipeline.train.losses import build_loss
from pipeline.train.models import MODEL_NAMES, CosineLinear, build_model, count_parameters



N_CLASSES = 5
IMAGE_SHAPES = [(1, 32, 32), (1, 8, 8), (3, 32, 32)]
FEATURE_SHAPE = (20,)

# (name, depth, width): resnets narrow so the file stays fast; widths do not change the structure.
ARCHS = [("mlp", None, None), ("csdnn", None, None), ("lenet", None, None),
         ("resnet", 10, 8), ("resnet", 18, 8), ("resnet", 34, 4), ("resnet", 50, 4)]


def cfg(name, depth=None, width=None, **kw):
    c = ModelSection(name=name, **kw)
    if depth is not None:
        c.depth = depth
    if width is not None:
        c.width = width
    return c


def cases():
    for name, depth, width in ARCHS:
        shapes = IMAGE_SHAPES + ([FEATURE_SHAPE] if name in ("mlp", "csdnn") else [])
        for shape in shapes:
            yield pytest.param(name, depth, width, shape, id=f"{name}{depth or ''}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("name,depth,width,shape", list(cases()))
def test_output_and_feature_shapes(name, depth, width, shape):
    torch.manual_seed(0)
    model = build_model(cfg(name, depth, width), shape, N_CLASSES).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        both = model(x, return_features=True)
    assert logits.shape == (3, N_CLASSES)
    assert feats.shape == (3, model.feature_dim)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.feature_dim
    assert model.classifier.out_features == N_CLASSES
    # forward = classifier(features(x)), and return_features gives both from one pass
    torch.testing.assert_close(model.classifier(feats), logits)
    torch.testing.assert_close(both[0], logits)
    torch.testing.assert_close(both[1], feats)


def test_csdnn_is_the_128_64_mlp_and_mlp_follows_hidden():
    csdnn = build_model(cfg("csdnn", hidden=[7]), (20,), 2)   # hidden ignored for the preset
    dims = [(m.in_features, m.out_features) for m in csdnn.body if isinstance(m, nn.Linear)]
    assert dims == [(20, 128), (128, 64)] and csdnn.feature_dim == 64
    mlp = build_model(cfg("mlp", hidden=[32, 16, 8]), (1, 8, 8), 3)
    dims = [(m.in_features, m.out_features) for m in mlp.body if isinstance(m, nn.Linear)]
    assert dims == [(64, 32), (32, 16), (16, 8)] and mlp.feature_dim == 8
    logreg = build_model(cfg("mlp", hidden=[]), (20,), 3)
    assert logreg.feature_dim == 20 and count_parameters(logreg) == 20 * 3 + 3


def test_lenet_geometry():
    """Classic LeNet-5 on 32×32 (conv stack ends at 16@5×5 = 400 inputs); padded on 8×8 digits."""
    m32 = build_model(cfg("lenet"), (1, 32, 32), 10)
    assert m32.conv_output_size == (5, 5)
    convs = [m for m in m32.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(6, (5, 5), (0, 0)), (16, (5, 5), (0, 0))]
    linears = [(m.in_features, m.out_features) for m in m32.body.modules() if isinstance(m, nn.Linear)]
    assert linears == [(400, 120), (120, 84)]
    # the classic LeNet-5 parameter count with a 10-way output: 61,706
    assert count_parameters(m32) == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    m8 = build_model(cfg("lenet"), (1, 8, 8), 10)
    assert m8.conv_output_size == (2, 2)
    assert [c.padding for c in m8.modules() if isinstance(c, nn.Conv2d)] == [(2, 2), (2, 2)]


def test_resnet_param_counts_increase_with_depth():
    counts = {d: count_parameters(build_model(cfg("resnet", d), (3, 32, 32), 10)) for d in (10, 18, 34, 50)}
    assert counts[10] < counts[18] < counts[34] < counts[50]
    # ResNet-18 for CIFAR-10 (3×3 stem, no max-pool, widths 64..512) has 11,173,962 parameters
    # (e.g. kuangliu/pytorch-cifar); ResNet-50 of that family 23,520,842.
    assert counts[18] == 11_173_962
    assert counts[50] == 23_520_842


def test_resnet_blocks_and_feature_dims():
    r18 = build_model(cfg("resnet", 18, 16), (1, 8, 8), 3)
    r50 = build_model(cfg("resnet", 50, 16), (1, 8, 8), 3)
    assert r18.feature_dim == 16 * 8 and r50.feature_dim == 16 * 8 * 4   # Bottleneck expands 4×
    assert type(r18.body[3]).__name__ == "BasicBlock" and type(r50.body[3]).__name__ == "Bottleneck"
    assert not any(isinstance(m, nn.MaxPool2d) for m in r18.modules())
    stem = r18.body[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    n_blocks = sum(1 for m in r50.body if type(m).__name__ == "Bottleneck")
    assert n_blocks == 3 + 4 + 6 + 3


def test_cosine_classifier_and_dropout():
    m = build_model(cfg("mlp", hidden=[16], classifier="cosine", dropout=0.5), (10,), 3)
    assert isinstance(m.classifier, CosineLinear)
    x = torch.randn(50, 10) * 100
    m.eval()
    out = m(x)
    assert out.abs().max() <= 1.0 + 1e-5
    torch.testing.assert_close(m(x), out)          # eval: dropout off, deterministic
    m.train()
    torch.manual_seed(1)
    assert not torch.allclose(m.features(x), m.features(x))   # train: dropout on the features
    logits, feats = m(x, return_features=True)                # the classifier sees the dropped-out features
    torch.testing.assert_close(m.classifier(feats), logits)


def test_config_fields_reach_the_model(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  name: resnet\n  depth: 10\n  width: 4\n")
    c = load_config(p, ["model.classifier=cosine"])
    m = build_model(c.model, (1, 8, 8), 4)
    assert m.feature_dim == 32 and isinstance(m.classifier, CosineLinear)


@pytest.mark.parametrize("model_cfg,shape,n,needle", [
    (cfg("vgg"), (1, 8, 8), 3, "vgg"),
    (cfg("resnet", 20), (1, 8, 8), 3, "depth"),
    (cfg("resnet", width=0), (1, 8, 8), 3, "width"),
    (cfg("lenet"), (20,), 3, "lenet"),
    (cfg("resnet", 18), (20,), 3, "resnet"),
    (cfg("mlp"), (8, 8), 3, "shape"),
    (cfg("mlp"), (0,), 3, "shape"),
    (cfg("mlp", hidden=[16, -1]), (20,), 3, "hidden"),
    (cfg("mlp", hidden="16"), (20,), 3, "hidden"),
    (cfg("mlp", dropout=1.0), (20,), 3, "dropout"),
    (cfg("mlp", classifier="arc"), (20,), 3, "classifier"),
    (cfg("mlp"), (20,), 1, "n_classes"),
])
def test_bad_config_raises_input_error_naming_it(model_cfg, shape, n, needle):
    with pytest.raises(InputError, match=needle):
        build_model(model_cfg, shape, n)


def tiny_problem(shape, n=24, classes=3, seed=0):
    """Separable data: each class adds its own fixed pattern to the noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(classes, *shape, generator=g) * 2
    y = torch.arange(n) % classes
    x = torch.randn(n, *shape, generator=g) * 0.5 + patterns[y]
    return x, y


@pytest.mark.parametrize("name,depth,width,shape", [
    ("mlp", None, None, (20,)), ("csdnn", None, None, (1, 8, 8)), ("lenet", None, None, (1, 32, 32)),
    ("lenet", None, None, (1, 8, 8)), ("resnet", 10, 8, (1, 8, 8)), ("resnet", 50, 4, (1, 8, 8)),
])
def test_a_few_training_steps_reduce_the_loss(name, depth, width, shape):
    torch.manual_seed(0)
    model = build_model(cfg(name, depth, width), shape, 3)
    x, y = tiny_problem(shape)
    loss = build_loss("focal", [8, 8, 8])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = loss(model(x), y).item()
    for _ in range(15):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        last = loss(model(x), y).item()
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize("name,depth", [("lenet", None), ("resnet", 18), ("csdnn", None)])
def test_bf16_autocast_forward_and_loss(name, depth):
    model = build_model(cfg(name, depth, 4), (1, 8, 8), 3)
    x, y = tiny_problem((1, 8, 8), n=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = model(x, return_features=True)
        value = build_loss("ldam", [10, 5, 1], scale=1.0)(logits, y)
    assert logits.shape == (6, 3) and feats.shape == (6, model.feature_dim)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_model_names_exported():
    assert set(MODEL_NAMES) == {"mlp", "csdnn", "lenet", "resnet"}
