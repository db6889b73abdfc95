"""The sampler's console table: class sizes before and after, from a manifest."""
from __future__ import annotations

from typing import Mapping

from pipeline.io import label_key


def format_manifest(manifest: Mapping, max_rows: int = 24) -> str:
    """A before/after table of class sizes (largest input class first) for the CLI.

    With more than ``max_rows`` classes only the largest and smallest ``max_rows // 2`` are
    listed (the totals and ρ always cover every class; ``manifest.json`` has them all).
    """
    before = manifest.get("input_counts", {})
    planned = manifest.get("planned", {})
    achieved = manifest.get("achieved", {})
    labels = sorted(planned, key=lambda k: (-int(before.get(k, 0)), label_key(k)))
    head = (f"strategy {manifest.get('strategy')}  seed {manifest.get('seed')}  rows "
            f"{manifest.get('input_rows')} -> {manifest.get('output_rows')}")
    w = max([5] + [len(str(k)) for k in labels])
    lines = [head, f"{'class':>{w}}  {'before':>10}  {'planned':>10}  {'after':>10}  {'x':>8}"]
    shown = labels if len(labels) <= max_rows else labels[:max_rows // 2] + [None] + labels[-(max_rows // 2):]
    for k in shown:
        if k is None:
            lines.append(f"{'...':>{w}}  ({len(labels) - 2 * (max_rows // 2)} more classes in manifest.json)")
            continue
        b, p, a = int(before.get(k, 0)), int(planned.get(k, 0)), int(achieved.get(k, 0))
        factor = f"{a / b:.3g}" if b else "-"
        lines.append(f"{k:>{w}}  {b:>10}  {p:>10}  {a:>10}  {factor:>8}")
    n_in, n_out = manifest.get("input_rows") or 0, manifest.get("output_rows") or 0
    rho = lambda d: (max(d.values()) / min(v for v in d.values() if v)  # noqa: E731
                     if d and any(d.values()) else float("nan"))
    lines.append(f"{'total':>{w}}  {n_in:>10}  {sum(int(v) for v in planned.values()):>10}  "
                 f"{n_out:>10}")
    b_int = {k: int(v) for k, v in before.items()}
    a_int = {k: int(v) for k, v in achieved.items() if int(v) > 0}
    lines.append(f"imbalance ratio rho: {rho(b_int):.1f} -> {rho(a_int):.1f}")
    return "\n".join(lines)
