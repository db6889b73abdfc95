"""The networks the pipeline trains, built from the ``model`` config section.

Every model is an :class:`ImbalanceNet`: ``features(x)`` returns the penultimate-layer "deep
features" of shape (N, ``feature_dim``), ``classifier`` is the final ``nn.Linear`` (feature_dim →
n_classes) and ``forward(x) = classifier(features(x))``. The deep-feature methods of the survey
(category centers, CRL, DOS, LMLE) use ``features``; under DDP call ``model(x,
return_features=True)``, which returns ``(logits, features)`` from one forward pass through the
wrapper (calling ``ddp_model.module.features`` would bypass DDP's gradient hooks).

Models (``model.name``):

* ``mlp`` — Linear → ReLU (→ BatchNorm1d if ``batch_norm``) → Dropout per entry of
  ``model.hidden``; images are flattened. ``hidden: []`` is multinomial logistic regression.
* ``csdnn`` — the MLP of Wang et al.'s cost-sensitive DNN (survey section CSDNN): two hidden layers
  of 128 and 64 units (``model.hidden`` is ignored).
* ``lenet`` — LeNet-5 (LeCun et al. 1998, survey Fig. 2): conv 6@5×5 → max-pool → conv 16@5×5 →
  max-pool → 120 → 84, ReLU. On 32×32 inputs it is the classic geometry (32→28→14→10→5, 400 inputs
  to the dense layers). A convolution whose input is smaller than 10 pixels gets "same" padding (2)
  so 8×8 images such as scikit-learn's digits pass through, and an adaptive average pool brings any
  size to 5×5, so the dense layers are always 400 → 120 → 84.
* ``resnet`` — He et al.'s residual networks of depth 10/18/34 (BasicBlock) and 50/101/152
  (Bottleneck) adapted to small images as in their CIFAR experiments: 3×3 stride-1 stem, no
  max-pool, four stages of widths w, 2w, 4w, 8w (``model.width``, default 64) with strides 1, 2, 2,
  2, global average pool. Used for the "very deep networks" of Ding et al. (survey: depth as a
  parameter under imbalance).

``model.dropout`` is applied to the deep features (before the classifier) in every model and also
after each hidden layer of the MLPs. ``model.classifier: cosine`` replaces the linear head by a
cosine-similarity head (normalised features × normalised weights, no bias; logits in [−1, 1]), the
head LDAM's scale s = 30 assumes (Cao et al. 2019).

References:

* Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document recognition",
  Proceedings of the IEEE 86(11) (1998), https://doi.org/10.1109/5.726791
* K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  https://doi.org/10.1109/CVPR.2016.90
* H. Wang, Z. Cui, Y. Chen, M. Avidan, A. Ben Abdallah, A. Kronzer, "Predicting Hospital Readmission via
  Cost-Sensitive Deep Learning", IEEE/ACM Transactions on Computational Biology and Bioinformatics (2018)
* W. Ding et al., "Facial action recognition using very deep networks for highly imbalanced class
  distribution", APSIPA ASC 2017
* K. Cao, C. Wei, A. Gaidon, N. Arechiga, T. Ma, "Learning Imbalanced Datasets with
  Label-Distribution-Aware Margin Loss", NeurIPS 2019, https://arxiv.org/abs/1906.07413
* J. M. Johnson, T. M. Khoshgoftaar, "Survey on deep learning with class imbalance", Journal of Big
  Data 6, 27 (2019), https://doi.org/10.1186/s40537-019-0192-5
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import InputError

__all__ = [
    "MODEL_NAMES",
    "RESNET_DEPTHS",
    "check_model_config",
    "build_model",
    "count_parameters",
    "ImbalanceNet",
    "MLP",
    "LeNet5",
    "ResNet",
    "CosineLinear",
]

MODEL_NAMES = ("mlp", "csdnn", "lenet", "resnet")
CLASSIFIERS = ("linear", "cosine")
CSDNN_HIDDEN = (128, 64)


class CosineLinear(nn.Linear):
    """Cosine classifier: logits_j = ⟨x/‖x‖, w_j/‖w_j‖⟩ ∈ [−1, 1] (no bias).

    A subclass of ``nn.Linear`` (``weight`` has shape (n_classes, feature_dim)), so code that
    reads the classifier's weights works for both heads.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def _head(kind: str, in_features: int, n_classes: int) -> nn.Linear:
    return CosineLinear(in_features, n_classes) if kind == "cosine" else nn.Linear(in_features, n_classes)


class ImbalanceNet(nn.Module):
    """Base: a feature extractor ``body`` (x → (N, feature_dim)) and a linear ``classifier``."""

    def __init__(self, body: nn.Module, feature_dim: int, n_classes: int, classifier: str = "linear",
                 dropout: float = 0.0):
        super().__init__()
        self.body = body
        self.feature_dim = int(feature_dim)
        self.n_classes = int(n_classes)
        self.feature_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = _head(classifier, self.feature_dim, self.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer deep features, shape (N, feature_dim)."""
        return self.feature_dropout(self.body(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        logits = self.classifier(f)
        return (logits, f) if return_features else logits


class MLP(ImbalanceNet):
    """Fully connected network: [Linear → ReLU (→ BatchNorm1d) (→ Dropout)] per hidden size."""

    def __init__(self, in_dim: int, hidden: Sequence[int], n_classes: int, dropout: float = 0.0,
                 batch_norm: bool = False, classifier: str = "linear"):
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_dim
        for i, h in enumerate(hidden):
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            if dropout > 0 and i < len(hidden) - 1:   # the last one is the feature dropout
                layers.append(nn.Dropout(dropout))
            d = h
        super().__init__(nn.Sequential(*layers), d, n_classes, classifier,
                         dropout=dropout if hidden else 0.0)
        self.hidden = tuple(hidden)


def _lenet_conv(in_ch: int, out_ch: int, size: tuple[int, int]) -> tuple[nn.Module, tuple[int, int]]:
    """5×5 convolution (valid if the input is at least 10 px, else 'same') + ReLU + 2×2 max-pool."""
    pad = 0 if min(size) >= 10 else 2
    h, w = (s + 2 * pad - 4 for s in size)
    block = nn.Sequential(nn.Conv2d(in_ch, out_ch, 5, padding=pad), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2, ceil_mode=True))
    return block, (math.ceil(h / 2), math.ceil(w / 2))


class LeNet5(ImbalanceNet):
    """LeNet-5-style CNN (see the module docstring for the geometry)."""

    def __init__(self, in_channels: int, size: tuple[int, int], n_classes: int, dropout: float = 0.0,
                 classifier: str = "linear"):
        c1, s1 = _lenet_conv(in_channels, 6, size)
        c2, s2 = _lenet_conv(6, 16, s1)
        body = nn.Sequential(
            c1, c2,
            nn.AdaptiveAvgPool2d((5, 5)),  # identity on 32×32 inputs (already 5×5)
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
        )
        super().__init__(body, 84, n_classes, classifier, dropout)
        self.conv_output_size = s2


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (He et al. 2016)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 → 3×3 → 1×1 bottleneck with 4× expansion (He et al. 2016), stride on the 3×3."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


#: depth → (block, blocks per stage), as in He et al. 2016 (ResNet-10: one block per stage).
RESNET_DEPTHS: dict[int, tuple[type, tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(ImbalanceNet):
    """ResNet for small images: 3×3 stem, no max-pool, four stages, global average pool."""

    def __init__(self, depth: int, in_channels: int, n_classes: int, width: int = 64, dropout: float = 0.0,
                 classifier: str = "linear"):
        block, layers = RESNET_DEPTHS[depth]
        mods: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                 nn.ReLU(inplace=True)]
        in_planes = width
        for stage, (n_blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            planes = width * 2 ** stage
            for b in range(n_blocks):
                mods.append(block(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes * block.expansion
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(nn.Sequential(*mods), in_planes, n_classes, classifier, dropout)
        self.depth = depth
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return value


def check_model_config(model_cfg: Any, image: bool | None = None) -> str:
    """Check a model section before any data exists (``image``: whether the inputs are images;
    None when not known yet); return the model name. Raises :class:`InputError` naming the key.

    The same rules :func:`build_model` applies, without building anything: name, classifier,
    dropout, mlp hidden sizes, resnet depth and width, and that lenet/resnet get images.
    """
    name = str(getattr(model_cfg, "name", "")).strip().lower()
    if name not in MODEL_NAMES:
        raise InputError(f"unknown model.name '{getattr(model_cfg, 'name', None)}' (known: {', '.join(MODEL_NAMES)})")
    dropout = getattr(model_cfg, "dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise InputError(f"model.dropout must be in [0, 1), got {dropout!r}")
    head = str(getattr(model_cfg, "classifier", "linear")).lower()
    if head not in CLASSIFIERS:
        raise InputError(f"unknown model.classifier '{head}' (known: {', '.join(CLASSIFIERS)})")
    if name == "mlp":
        hidden = getattr(model_cfg, "hidden", [128, 64])
        if not isinstance(hidden, (list, tuple)):
            raise InputError(f"model.hidden must be a list of layer sizes, got {hidden!r}")
        for h in hidden:
            _positive_int("model.hidden entries", h)
    if name in ("lenet", "resnet") and image is False:
        raise InputError(f"model.name={name} needs image input, but the data are feature vectors "
                         "(use model.name=mlp or csdnn)")
    # depth and width are checked whatever the model (a typo there is a typo even when unused)
    depth = getattr(model_cfg, "depth", 18)
    if isinstance(depth, bool) or depth not in RESNET_DEPTHS:
        raise InputError(f"unsupported model.depth {depth!r} for resnet (supported: "
                         f"{', '.join(str(d) for d in RESNET_DEPTHS)})")
    _positive_int("model.width", getattr(model_cfg, "width", 64))
    return name


def build_model(model_cfg: Any, input_shape: Sequence[int], n_classes: int) -> ImbalanceNet:
    """Build the network named by ``model_cfg.name`` for inputs of ``input_shape`` — (C, H, W) for
    images, (D,) for feature vectors — and ``n_classes`` outputs.

    ``model_cfg`` is a :class:`pipeline.config.ModelSection` (any object with its attributes works;
    missing optional ones take the section's defaults). A bad name, depth, width, dropout, hidden
    list, input shape or class count raises :class:`InputError` naming it.
    """
    name = str(getattr(model_cfg, "name", "")).strip().lower()
    if name not in MODEL_NAMES:
        raise InputError(f"unknown model.name '{getattr(model_cfg, 'name', None)}' (known: {', '.join(MODEL_NAMES)})")
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise InputError(f"input shape must be (C, H, W) or (D,), got {input_shape!r}") from None
    if len(shape) not in (1, 3) or any(s < 1 for s in shape):
        raise InputError(f"input shape must be (C, H, W) for images or (D,) for features, got {shape}")
    n_classes = _positive_int("n_classes", n_classes)
    if n_classes < 2:
        raise InputError(f"n_classes must be at least 2, got {n_classes}")
    dropout = getattr(model_cfg, "dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise InputError(f"model.dropout must be in [0, 1), got {dropout!r}")
    head = str(getattr(model_cfg, "classifier", "linear")).lower()
    if head not in CLASSIFIERS:
        raise InputError(f"unknown model.classifier '{head}' (known: {', '.join(CLASSIFIERS)})")

    if name in ("mlp", "csdnn"):
        if name == "csdnn":
            hidden = list(CSDNN_HIDDEN)
        else:
            hidden = getattr(model_cfg, "hidden", [128, 64])
            if not isinstance(hidden, (list, tuple)):
                raise InputError(f"model.hidden must be a list of layer sizes, got {hidden!r}")
            hidden = [_positive_int("model.hidden entries", h) for h in hidden]
        return MLP(math.prod(shape), hidden, n_classes, float(dropout),
                   bool(getattr(model_cfg, "batch_norm", False)), head)

    if len(shape) != 3:
        raise InputError(f"model '{name}' needs image input of shape (C, H, W), got feature vectors of shape {shape}")
    c, h, w = shape
    if name == "lenet":
        return LeNet5(c, (h, w), n_classes, float(dropout), head)
    depth = getattr(model_cfg, "depth", 18)
    if depth not in RESNET_DEPTHS or isinstance(depth, bool):
        raise InputError(f"unsupported model.depth {depth!r} for resnet (supported: "
                         f"{', '.join(str(d) for d in RESNET_DEPTHS)})")
    width = _positive_int("model.width", getattr(model_cfg, "width", 64))
    return ResNet(depth, c, n_classes, width, float(dropout), head)
