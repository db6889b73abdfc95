"""Each imbalance loss against an independent computation of its formula (numpy / plain loops)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.errors import InputError
from pipeline.train.losses import (
    LOSS_NAMES,
    build_loss,
    class_balanced_weights,
    drw_weights,
    ldam_margins,
)



C = 4
COUNTS = [500, 120, 30, 6]
COST = [[0, 1, 2, 1], [3, 0, 1, 1], [5, 5, 0, 2], [8, 4, 4, 0]]

# Parameters that make every loss buildable, for the generic tests.
PARAMS = {
    "cost_matrix": {"cost": COST},
    "focal": {"gamma": 2.0, "alpha": [0.1, 0.2, 0.3, 0.4]},
    "ldam": {"max_margin": 0.5, "scale": 10.0, "weight": [0.5, 1.0, 1.5, 2.0]},
    "logit_adjusted": {"tau": 0.7},
    "class_balanced": {"beta": 0.99},
}


def batch(n=12, seed=0, scale=3.0, classes=C):
    g = np.random.default_rng(seed)
    z = (g.normal(size=(n, classes)) * scale).astype(np.float32)
    y = g.integers(0, classes, size=n)
    k = min(n, classes)
    y[:k] = np.arange(k)  # every class present (when n allows)
    return z, y


# ---------------------------------------------------------------- independent reference formulas

def log_softmax_np(row):
    row = np.asarray(row, dtype=np.float64)
    m = max(row)
    return row - m - math.log(sum(math.exp(v - m) for v in row))


def ce_np(row, y):
    return -log_softmax_np(row)[y]


def eff_counts_np(counts):
    pos = min(c for c in counts if c > 0)
    return [c if c > 0 else pos for c in counts]


def norm_to_c(w):
    s = sum(w)
    return [v * len(w) / s for v in w]


def ref_per_sample(name, z, y, counts=COUNTS, **p):
    """Per-sample reference values, one plain-Python computation per sample."""
    n = eff_counts_np(counts)
    k = len(counts)
    out = []
    for row, t in zip(z, y):
        row = np.asarray(row, dtype=np.float64)
        if name == "ce":
            v = ce_np(row, t)
        elif name == "weighted_ce":
            power = p.get("power", 1.0)
            w = norm_to_c([c ** -power for c in n])
            v = w[t] * ce_np(row, t)
        elif name == "class_balanced":
            beta = p.get("beta", 0.999)
            w = norm_to_c([(1 - beta) / (1 - beta ** c) for c in n])
            v = w[t] * ce_np(row, t)
        elif name == "cost_matrix":
            cost = p["cost"]
            if p.get("form", "weighted_ce") == "weighted_ce":
                w = sum(cost[t][j] for j in range(k) if j != t) / (k - 1)
                v = w * ce_np(row, t)
            else:
                prob = np.exp(log_softmax_np(row))
                v = sum(cost[t][j] * prob[j] for j in range(k))
        elif name == "focal":
            gamma = p.get("gamma", 2.0)
            alpha = p.get("alpha")
            pt = math.exp(log_softmax_np(row)[t])
            a = 1.0 if alpha is None else alpha[t]
            v = -a * (1 - pt) ** gamma * math.log(pt)
        elif name == "ldam":
            mm, s = p.get("max_margin", 0.5), p.get("scale", 30.0)
            m = [c ** -0.25 for c in n]
            m = [v * mm / max(m) for v in m]
            w = p.get("weight") or [1.0] * k
            shifted = row.copy()
            shifted[t] -= m[t]
            v = w[t] * ce_np(s * shifted, t)
        elif name == "logit_adjusted":
            tau = p.get("tau", 1.0)
            tot = sum(n)
            v = ce_np(row + np.array([tau * math.log(c / tot) for c in n]), t)
        elif name == "balanced_softmax":
            v = ce_np(row + np.array([math.log(c) for c in n]), t)
        else:
            raise AssertionError(name)
        out.append(v)
    return np.array(out)


def ref_mfe(z, y, squared):
    """Wang et al.'s MFE / MSFE over C classes: class-wise mean of ½‖p − onehot‖², summed (squared)."""
    total = 0.0
    for c in sorted(set(int(t) for t in y)):
        errs = []
        for row, t in zip(z, y):
            if t != c:
                continue
            p = np.exp(log_softmax_np(row))
            errs.append(0.5 * sum((p[j] - (1.0 if j == t else 0.0)) ** 2 for j in range(len(row))))
        e = sum(errs) / len(errs)
        total += e * e if squared else e
    return total


def run(name, z, y, reduction="mean", counts=COUNTS, **params):
    loss = build_loss(name, counts, reduction=reduction, **params)
    return loss(torch.tensor(z), torch.tensor(y))


# ---------------------------------------------------------------- formula checks

PER_SAMPLE_CASES = [
    ("ce", {}),
    ("weighted_ce", {}),
    ("weighted_ce", {"power": 0.5}),
    ("class_balanced", {}),
    ("class_balanced", {"beta": 0.9}),
    ("cost_matrix", {"cost": COST}),
    ("cost_matrix", {"cost": COST, "form": "expected_cost"}),
    ("focal", {}),
    ("focal", {"gamma": 0.5, "alpha": [0.1, 0.2, 0.3, 0.4]}),
    ("focal", {"gamma": 3.0, "alpha": [1.0, 0.0, 2.0, 0.5]}),
    ("ldam", {}),
    ("ldam", {"max_margin": 0.3, "scale": 5.0, "weight": [0.5, 1.0, 1.5, 2.0]}),
    ("logit_adjusted", {}),
    ("logit_adjusted", {"tau": 0.5}),
    ("balanced_softmax", {}),
]


@pytest.mark.parametrize("name,params", PER_SAMPLE_CASES)
def test_per_sample_values_match_formula(name, params):
    z, y = batch(16, seed=1)
    got = run(name, z, y, reduction="none", **params)
    assert got.dtype == torch.float32 and got.shape == (16,)
    want = ref_per_sample(name, z, y, **params)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # mean is the plain mean of the per-sample values, sum their sum
    np.testing.assert_allclose(run(name, z, y, "mean", **params).item(), want.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(name, z, y, "sum", **params).item(), want.sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,params", PER_SAMPLE_CASES)
def test_zero_class_counts_follow_documented_rule(name, params):
    counts = [500, 0, 30, 0]  # zero counts become the smallest positive count (30)
    z, y = batch(10, seed=2)
    got = run(name, z, y, reduction="none", counts=counts, **params)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), ref_per_sample(name, z, y, counts=counts, **params),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("squared", [False, True])
def test_mfe_msfe_batch_value(squared):
    name = "msfe" if squared else "mfe"
    for seed in range(3):
        z, y = batch(20, seed=seed)
        y[y == 2] = 1  # class 2 absent from the batch: contributes nothing
        want = ref_mfe(z, y, squared)
        for red in ("mean", "sum"):
            np.testing.assert_allclose(run(name, z, y, red).item(), want, rtol=1e-5)
        shares = run(name, z, y, "none")
        assert shares.shape == (20,)
        np.testing.assert_allclose(shares.sum().item(), want, rtol=1e-5)


def test_mfe_binary_is_fpe_plus_fne_and_msfe_expansion():
    """Two classes: MFE = FPE + FNE, MSFE = FPE² + FNE² = ½((FPE+FNE)² + (FPE−FNE)²) (Wang et al.)."""
    z, y = batch(15, seed=3, classes=2)
    p = np.exp(np.array([log_softmax_np(r) for r in z]))
    onehot = np.eye(2)[y]
    l = 0.5 * ((p - onehot) ** 2).sum(1)
    fpe, fne = l[y == 0].mean(), l[y == 1].mean()
    np.testing.assert_allclose(run("mfe", z, y, counts=[10, 2]).item(), fpe + fne, rtol=1e-5)
    np.testing.assert_allclose(run("msfe", z, y, counts=[10, 2]).item(),
                               0.5 * ((fpe + fne) ** 2 + (fpe - fne) ** 2), rtol=1e-5)


@pytest.mark.parametrize("name", ["mfe", "msfe"])
def test_mfe_share_gradients_equal_batch_loss_gradients(name):
    """The per-sample shares sum to the batch loss in gradient too (MSFE via the product rule)."""
    z, y = batch(12, seed=4)
    y[y == 3] = 0
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    # independent torch reference: loop over classes
    p = torch.softmax(zt, 1)
    l = 0.5 * ((p - torch.eye(C, dtype=torch.float64)[torch.tensor(y)]) ** 2).sum(1)
    ref = 0
    for c in set(y.tolist()):
        e = l[torch.tensor(y == c)].mean()
        ref = ref + (e * e if name == "msfe" else e)
    (g_ref,) = torch.autograd.grad(ref, zt)
    z32 = torch.tensor(z, requires_grad=True)
    build_loss(name, COUNTS, reduction="none")(z32, torch.tensor(y)).sum().backward()
    np.testing.assert_allclose(z32.grad.numpy(), g_ref.numpy(), rtol=1e-4, atol=1e-7)
    z32b = torch.tensor(z, requires_grad=True)
    build_loss(name, COUNTS)(z32b, torch.tensor(y)).backward()
    np.testing.assert_allclose(z32b.grad.numpy(), g_ref.numpy(), rtol=1e-4, atol=1e-7)


def test_focal_gamma0_equals_ce():
    z, y = batch(32, seed=5)
    np.testing.assert_allclose(run("focal", z, y, "none", gamma=0).numpy(), run("ce", z, y, "none").numpy(),
                               rtol=1e-6, atol=1e-7)


def test_focal_reduces_easy_sample_loss_more():
    z, y = batch(32, seed=6)
    ce = run("ce", z, y, "none").numpy()
    fl = run("focal", z, y, "none", gamma=2).numpy()
    assert np.all(fl <= ce + 1e-7)
    # the ratio FL/CE = (1 - p_t)^2 is smallest for the best-classified sample
    pt = np.exp(-ce)
    assert np.argmin(fl / ce) == np.argmax(pt)


def test_focal_binary_matches_sigmoid_focal_formula():
    """Softmax over logits (0, x) is sigmoid(x); with α = a for class 1 and 1 − a for class 0 the
    loss must equal the sigmoid focal loss of RetinaNet (torchvision's sigmoid_focal_loss formula)."""
    g = np.random.default_rng(7)
    x = g.normal(size=25) * 4
    t = g.integers(0, 2, size=25)
    a, gamma = 0.25, 2.0
    p = 1 / (1 + np.exp(-x))
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = a * t + (1 - a) * (1 - t)
    want = alpha_t * bce * (1 - p_t) ** gamma
    z = np.stack([np.zeros_like(x), x], 1).astype(np.float32)
    got = run("focal", z, t, "none", counts=[90, 10], gamma=gamma, alpha=a)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-7)


def test_focal_alpha_balanced_is_inverse_frequency():
    z, y = batch(12, seed=8)
    w = norm_to_c([1 / c for c in COUNTS])
    np.testing.assert_allclose(run("focal", z, y, "none", gamma=1.0, alpha="balanced").numpy(),
                               ref_per_sample("focal", z, y, gamma=1.0, alpha=w), rtol=1e-5)


def test_shifted_logit_losses_equal_ce_on_shifted_logits():
    z, y = batch(16, seed=9)
    n = np.array(COUNTS, dtype=np.float64)
    bs = run("balanced_softmax", z, y, "none")
    np.testing.assert_allclose(bs.numpy(), run("ce", (z + np.log(n)).astype(np.float32), y, "none").numpy(),
                               rtol=1e-5)
    la = run("logit_adjusted", z, y, "none", tau=1.5)
    np.testing.assert_allclose(
        la.numpy(), run("ce", (z + 1.5 * np.log(n / n.sum())).astype(np.float32), y, "none").numpy(), rtol=1e-5)
    # τ = 1: logit adjustment and balanced softmax are the same loss (log π and log n differ by a constant)
    np.testing.assert_allclose(run("logit_adjusted", z, y, "none").numpy(), bs.numpy(), rtol=1e-5)
    # τ = 0 is plain CE
    np.testing.assert_allclose(run("logit_adjusted", z, y, "none", tau=0).numpy(), run("ce", z, y, "none").numpy(),
                               rtol=1e-6)


def test_weighted_losses_on_balanced_counts_equal_ce():
    z, y = batch(16, seed=10)
    ce = run("ce", z, y, "none").numpy()
    for name, params in [("weighted_ce", {}), ("class_balanced", {}), ("focal", {"gamma": 0, "alpha": "balanced"}),
                         ("cost_matrix", {"cost": (np.ones((C, C)) - np.eye(C)).tolist()})]:
        np.testing.assert_allclose(run(name, z, y, "none", counts=[50] * C, **params).numpy(), ce, rtol=1e-5,
                                   err_msg=name)


def test_cost_matrix_binary_is_csdnn_weighted_ce():
    """CSDNN (Wang et al.): false negatives cost 2× false positives → positives' CE weighs 2×."""
    z, y = batch(10, seed=11, classes=2)
    got = run("cost_matrix", z, y, "none", counts=[80, 20], cost=[[0, 1], [2, 0]]).numpy()
    want = np.array([(2.0 if t == 1 else 1.0) * ce_np(r, t) for r, t in zip(z, y)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_ldam_margins_and_drw_weights():
    counts = [1000, 100, 10, 1]
    m = ldam_margins(counts, 0.5)
    np.testing.assert_allclose(m, [0.5 * (c / 1) ** -0.25 for c in counts], rtol=1e-12)  # largest at n=1
    np.testing.assert_allclose(m[0] / m[2], (10 / 1000) ** 0.25, rtol=1e-12)
    assert m.max() == pytest.approx(0.5) and np.all(np.diff(m) > 0)
    loss = build_loss("ldam", counts, max_margin=0.5)
    np.testing.assert_allclose(loss.margins.numpy(), m, rtol=1e-6)
    # DRW weights: (1 − β)/(1 − β^n) with β = 0.9999, normalised to sum to C (Cao et al.'s code)
    beta = 0.9999
    raw = [(1 - beta) / (1 - beta ** c) for c in counts]
    np.testing.assert_allclose(drw_weights(counts), norm_to_c(raw), rtol=1e-9)
    np.testing.assert_allclose(drw_weights(counts).sum(), 4.0)
    np.testing.assert_allclose(class_balanced_weights(counts, 0.0), np.ones(4))
    # switching the weights (DRW stage) changes the loss as the formula says
    z, y = batch(8, seed=12)
    loss_none = build_loss("ldam", counts, reduction="none", scale=5.0)
    before = loss_none(torch.tensor(z), torch.tensor(y)).detach().numpy()
    np.testing.assert_allclose(before, ref_per_sample("ldam", z, y, counts=counts, scale=5.0), rtol=1e-5, atol=1e-5)
    w = drw_weights(counts)
    loss_none.set_weight(w)
    after = loss_none(torch.tensor(z), torch.tensor(y)).detach().numpy()
    np.testing.assert_allclose(after, before * w[y], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after, ref_per_sample("ldam", z, y, counts=counts, scale=5.0, weight=list(w)),
                               rtol=1e-5, atol=1e-5)


def test_ldam_margin_lowers_target_logit():
    """With no margin LDAM is CE on s·z; a margin on the true class raises the loss."""
    z, y = batch(8, seed=13)
    s = 4.0
    ce_scaled = run("ce", (s * z).astype(np.float32), y, "none").numpy()
    ldam = run("ldam", z, y, "none", scale=s).numpy()
    assert np.all(ldam > ce_scaled)


# ---------------------------------------------------------------- gradients, dtypes, reductions

def all_losses():
    return [(n, PARAMS.get(n, {})) for n in LOSS_NAMES]


@pytest.mark.parametrize("name,params", all_losses())
def test_gradients_finite_extreme_logits_and_absent_classes(name, params):
    z = np.array([[1e4, -1e4, 0, 0], [-1e4, 1e4, -1e4, 1e4], [0, 0, 0, 0], [1e4, 1e4, -1e4, -1e4],
                  [-1e4, -1e4, -1e4, 1e4]], dtype=np.float32)
    y = np.array([0, 0, 1, 2, 0])        # class 3 absent; confident right and confident wrong samples
    for counts in (COUNTS, [500, 0, 30, 0]):
        for reduction in ("mean", "none"):
            zt = torch.tensor(z, requires_grad=True)
            out = build_loss(name, counts, reduction=reduction, **params)(zt, torch.tensor(y))
            assert torch.isfinite(out).all(), (name, counts, reduction, out)
            out.sum().backward()
            assert torch.isfinite(zt.grad).all(), (name, counts, reduction, zt.grad)


def test_focal_small_gamma_gradient_finite_when_pt_is_one():
    zt = torch.tensor([[1e4, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]], requires_grad=True)
    for gamma in (0.1, 0.5, 1.0):
        zt.grad = None
        build_loss("focal", COUNTS, gamma=gamma)(zt, torch.tensor([0, 0])).backward()
        assert torch.isfinite(zt.grad).all(), gamma


@pytest.mark.parametrize("name,params", all_losses())
def test_bf16_autocast_computes_in_float32(name, params):
    z, y = batch(12, seed=14)
    zb = torch.tensor(z).to(torch.bfloat16)
    loss = build_loss(name, COUNTS, **params)
    ref = loss(zb.float(), torch.tensor(y))
    lin = torch.nn.Linear(C, C)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(C))
        lin.bias.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(zb.float())        # bf16 under CPU autocast
        assert logits.dtype == torch.bfloat16
        out = loss(logits, torch.tensor(y))
    assert out.dtype == torch.float32
    # same value as float32 computation on the same bf16 logits (up to the bf16 rounding of the Linear)
    np.testing.assert_allclose(out.item(), ref.item(), rtol=2e-2, atol=1e-3)
    out.backward()
    assert torch.isfinite(lin.weight.grad).all()
    # bf16 logits passed directly outside autocast: exactly the float32 value
    assert loss(zb, torch.tensor(y)).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("name,params", all_losses())
def test_training_step_reduces_loss(name, params):
    """A few SGD steps of a linear model on separable data lower every loss."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % C
    x = torch.randn(40, 6, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 6)[:, :6].float()
    model = torch.nn.Linear(6, C)
    loss = build_loss(name, COUNTS, **params)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    first = loss(model(x), y).item()
    for _ in range(40):
        opt.zero_grad()
        v = loss(model(x), y)
        v.backward()
        opt.step()
    assert loss(model(x), y).item() < first


def test_empty_batch_mean_is_zero():
    z = torch.zeros(0, C, requires_grad=True)
    for name in LOSS_NAMES:
        out = build_loss(name, COUNTS, **PARAMS.get(name, {}))(z, torch.zeros(0, dtype=torch.long))
        assert out.item() == 0.0, name
    z1, y1 = batch(1, seed=16, classes=C)
    for name in LOSS_NAMES:
        loss = build_loss(name, COUNTS, **PARAMS.get(name, {}))
        one = build_loss(name, COUNTS, reduction="none", **PARAMS.get(name, {}))(torch.tensor(z1), torch.tensor(y1))
        assert loss(torch.tensor(z1), torch.tensor(y1)).item() == pytest.approx(one.item()), name


def test_counts_as_tensor_and_name_normalised():
    z, y = batch(6, seed=15)
    a = build_loss("Weighted-CE", torch.tensor(COUNTS))(torch.tensor(z), torch.tensor(y))
    b = build_loss("weighted_ce", COUNTS)(torch.tensor(z), torch.tensor(y))
    assert a.item() == pytest.approx(b.item())


def test_loss_names_exported():
    assert set(LOSS_NAMES) == {"ce", "weighted_ce", "class_balanced", "cost_matrix", "focal", "mfe", "msfe",
                               "ldam", "logit_adjusted", "balanced_softmax"}


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,needle", [
    (lambda: build_loss("nope", COUNTS), "nope"),
    (lambda: build_loss("focal", COUNTS, gama=2), "gama"),
    (lambda: build_loss("ce", COUNTS, gamma=2), "gamma"),
    (lambda: build_loss("focal", COUNTS, gamma=-1), "gamma"),
    (lambda: build_loss("focal", COUNTS, gamma="x"), "gamma"),
    (lambda: build_loss("focal", COUNTS, alpha=[1, 2]), "alpha"),
    (lambda: build_loss("focal", COUNTS, alpha=0.25), "alpha"),
    (lambda: build_loss("focal", COUNTS, alpha="inverse"), "alpha"),
    (lambda: build_loss("class_balanced", COUNTS, beta=1.0), "beta"),
    (lambda: build_loss("class_balanced", COUNTS, beta=-0.1), "beta"),
    (lambda: build_loss("cost_matrix", COUNTS), "cost"),
    (lambda: build_loss("cost_matrix", COUNTS, cost=[[0, 1], [1, 0]]), "cost"),
    (lambda: build_loss("cost_matrix", COUNTS, cost=np.zeros((C, C))), "cost"),
    (lambda: build_loss("cost_matrix", COUNTS, cost=-np.ones((C, C))), "cost"),
    (lambda: build_loss("cost_matrix", COUNTS, cost=COST, form="other"), "form"),
    (lambda: build_loss("ldam", COUNTS, max_margin=0), "max_margin"),
    (lambda: build_loss("ldam", COUNTS, scale=-1), "scale"),
    (lambda: build_loss("ldam", COUNTS, weight=[1, 2]), "weight"),
    (lambda: build_loss("logit_adjusted", COUNTS, tau=float("nan")), "tau"),
    (lambda: build_loss("ce", COUNTS, reduction="avg"), "reduction"),
    (lambda: build_loss("ce", [5, -1, 3]), "class_counts"),
    (lambda: build_loss("ce", [0, 0, 0]), "class_counts"),
    (lambda: build_loss("ce", [7]), "class_counts"),
    (lambda: build_loss("ce", [1, float("nan")]), "class_counts"),
    (lambda: build_loss("ce", COUNTS)(torch.zeros(3, C + 1), torch.zeros(3, dtype=torch.long)), "logits"),
    (lambda: build_loss("ce", COUNTS)(torch.zeros(3, C), torch.zeros(4, dtype=torch.long)), "targets"),
])
def test_bad_input_raises_input_error_naming_it(call, needle):
    with pytest.raises(InputError, match=needle):
        call()
