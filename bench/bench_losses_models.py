"""Cost of the imbalance losses (vs plain CE) and training throughput of the models, on in-memory tensors.

Prints medians and the command that reproduces them; ``--markdown PATH`` also writes a section.

    python bench/bench_losses_models.py [--classes 103] [--batch 256] [--repeats 30] [--threads 1]
                                        [--device cpu|cuda] [--markdown docs/bench-models-losses.md]

Losses: forward + backward of the loss alone on (batch, classes) logits, median over repeats, and
the ratio to ``ce``. Models: one optimizer step (forward, loss, backward, Adam) on a batch of 32×32×1
images (the plankton preset's shape) or 8×8×1 digits, as images/s — the compute ceiling of the
training loop when data loading is free.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import ModelSection  # noqa: E402
from pipeline.train.losses import LOSS_NAMES, build_loss  # noqa: E402
from pipeline.train.models import build_model, count_parameters  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, repeats, device, warmup=3):
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def bench_losses(classes, batch, repeats, device):
    """Median time per loss; losses are timed round-robin so load spikes on a shared box hit all alike."""
    g = torch.Generator().manual_seed(0)
    counts = torch.logspace(4, 1, classes).round().tolist()            # ρ = 1000, like a long tail
    cost = (torch.ones(classes, classes) - torch.eye(classes)).tolist()
    params = {"cost_matrix": {"cost": cost}, "focal": {"gamma": 2.0}, "ldam": {"scale": 30.0}}
    z0 = torch.randn(batch, classes, generator=g).to(device)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    steps = {}
    for name in LOSS_NAMES:
        loss = build_loss(name, counts, **params.get(name, {})).to(device)
        z = z0.clone().requires_grad_(True)

        def step(loss=loss, z=z):
            z.grad = None
            loss(z, y).backward()

        steps[name] = step
    times = {name: [] for name in steps}
    for _ in range(3):
        for step in steps.values():
            step()
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(time_it(step, 1, device, warmup=0))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return [(n, med[n], med[n] / med["ce"]) for n in LOSS_NAMES]


MODELS = [("mlp", {}), ("csdnn", {}), ("lenet", {}), ("resnet", {"depth": 10}), ("resnet", {"depth": 18}),
          ("resnet", {"depth": 18, "width": 16})]


def bench_models(batch, repeats, device, shape):
    rows = []
    for name, kw in MODELS:
        torch.manual_seed(0)
        model = build_model(ModelSection(name=name, **kw), shape, 103).to(device)
        loss = build_loss("focal", [100] * 103).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(batch, *shape, device=device)
        y = torch.randint(0, 103, (batch,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            loss(model(x), y).backward()
            opt.step()

        t = time_it(step, repeats, device, warmup=2)
        label = name + (f"-{kw['depth']}" if "depth" in kw else "") + (f" (width {kw['width']})" if "width" in kw else "")
        rows.append((label, count_parameters(model), t, batch / t))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=103)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--model-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--model-repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cmd = "python bench/bench_losses_models.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    lines = [f"## Losses and models ({device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads)", "",
             f"Command: `{cmd.strip()}`", "",
             f"Loss forward+backward on ({args.batch}, {args.classes}) logits, median of {args.repeats}:", "",
             "| loss | ms | × ce |", "| --- | ---: | ---: |"]
    for name, t, r in bench_losses(args.classes, args.batch, args.repeats, device):
        lines.append(f"| {name} | {t * 1e3:.3f} | {r:.2f} |")
    for shape in ((1, 32, 32), (1, 8, 8)):
        lines += ["", f"One training step (forward, focal loss, backward, Adam), batch {args.model_batch} of "
                  f"{'×'.join(map(str, shape))} images, 103 classes, median of {args.model_repeats}:", "",
                  "| model | parameters | ms/step | images/s |", "| --- | ---: | ---: | ---: |"]
        for label, n, t, ips in bench_models(args.model_batch, args.model_repeats, device, shape):
            lines.append(f"| {label} | {n:,} | {t * 1e3:.1f} | {ips:,.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
