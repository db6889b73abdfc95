"""GPU throughput of training (ResNet-18 or LeNet-5 at 32×32, AMP) and batch prediction, fed by our
decoder vs the same batches already on the GPU.

Standalone on purpose: it imports only PyTorch and NumPy at module level (a GPU box may have
nothing else), plus ``pyarrow`` if it is installed. It builds its own table of raw uint8 32×32
images — Parquet row groups when pyarrow is there (as materialize writes them), else a NumPy
memmap — and times the training step of ``pipeline.train.loop`` (bf16 autocast, or fp16 with a
GradScaler; Adam; cross-entropy) two ways:

* ``fed``    — a background thread reads row groups and decodes them with ``pipeline.stream.readers``'s
               vectorised decoder (one ``frombuffer`` per row group; uint8 kept on the CPU, pinned),
               the step moves uint8 to the GPU (4x fewer bytes than float) and scales there;
* ``on_gpu`` — the same uint8 batches already resident on the GPU (the ceiling).

``--predict`` times prediction the same two ways instead: the network in ``torch.inference_mode``
(under the same autocast), the softmax scores copied back to the host, as Spark's predict does.

Goal: fed / on_gpu ≥ 0.9. Prints one JSON line. Smoke test on a CPU:

    python bench/gpu_loop.py --device cpu --steps 5
    python bench/gpu_loop.py --steps 300 --batch 256 --amp bf16                   # on a CUDA machine
    python bench/gpu_loop.py --steps 300 --batch 256 --amp bf16 --model lenet
    python bench/gpu_loop.py --steps 300 --batch 1024 --amp bf16 --predict
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:  # the project's decoder and models when importable (they need only torch/numpy)
    from pipeline.stream.readers import decode_images, to_float
    DECODER = "pipeline.stream.readers"
except Exception:  # pragma: no cover - a bare box without the package
    DECODER = "inline"

    def decode_images(col, image_shape):
        h, w = int(image_shape[0]), int(image_shape[1])
        if isinstance(col, np.ndarray) and col.dtype == np.uint8:
            return torch.from_numpy(np.ascontiguousarray(col)).view(-1, 1, h, w)
        if pa is not None and isinstance(col, (pa.Array, pa.ChunkedArray)):
            col = col.to_pylist()
        return torch.frombuffer(bytearray(b"".join(col)), dtype=torch.uint8).view(-1, 1, h, w)

    def to_float(x, device=None, non_blocking=False):
        if device is not None:
            x = x.to(device, non_blocking=non_blocking)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except Exception:  # pragma: no cover
    pa = pq = None


def build_network(name: str, n_classes: int, channels: int) -> torch.nn.Module:
    """``resnet18`` or ``lenet``, built by the project's model registry (as training builds them)."""
    from pipeline.train.models import build_model

    cfg = types.SimpleNamespace(name="resnet" if name == "resnet18" else name, depth=18, width=64, dropout=0.0,
                                classifier="linear", hidden=[], batch_norm=False)
    return build_model(cfg, (channels, 32, 32), n_classes)


# ------------------------------------------------------------------ data
def make_data(root: Path, rows: int, row_group: int, n_classes: int, seed: int = 0,
              storage: str = "auto") -> dict:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (rows, 32 * 32), dtype=np.uint8)
    y = rng.integers(0, n_classes, rows).astype(np.int64)
    if storage == "parquet" and pq is None:
        raise SystemExit("--storage parquet needs pyarrow, which is not installed here")
    if pq is not None and storage != "memmap":
        path = root / "table.parquet"
        t = pa.table({"label": pa.array(y), "image": pa.array([r.tobytes() for r in img], pa.binary())})
        pq.write_table(t, path, row_group_size=row_group)
        return {"kind": "parquet", "path": path, "rows": rows}
    path = root / "images.u8"
    mm = np.memmap(path, dtype=np.uint8, mode="w+", shape=img.shape)
    mm[:] = img
    mm.flush()
    np.save(root / "labels.npy", y)
    return {"kind": "memmap", "path": path, "labels": root / "labels.npy", "rows": rows, "row_group": row_group}


def _chunks(data: dict):
    """(uint8 images (N, 1, 32, 32), int64 labels) per row group, forever."""
    while True:
        if data["kind"] == "parquet":
            pf = pq.ParquetFile(data["path"])
            for rg in range(pf.num_row_groups):
                t = pf.read_row_group(rg, columns=["label", "image"])
                x = decode_images(t.column("image"), [32, 32])
                yield x, torch.from_numpy(t.column("label").to_numpy())
        else:
            mm = np.memmap(data["path"], dtype=np.uint8, mode="r").reshape(-1, 32 * 32)
            labels = np.load(data["labels"])
            for s in range(0, data["rows"], data["row_group"]):
                x = decode_images(np.ascontiguousarray(mm[s:s + data["row_group"]]), [32, 32])
                yield x, torch.from_numpy(labels[s:s + data["row_group"]])


def fed_batches(data: dict, batch: int, pin: bool, depth: int = 8):
    """Batches from a background reader/decoder thread (the loader's job), pinned for async copies."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        rest_x = rest_y = None
        for x, y in _chunks(data):
            if rest_x is not None:
                x, y = torch.cat([rest_x, x]), torch.cat([rest_y, y])
            n = (len(y) // batch) * batch
            for s in range(0, n, batch):
                bx, by = x[s:s + batch].contiguous(), y[s:s + batch]
                if pin:
                    bx, by = bx.pin_memory(), by.pin_memory()
                while not stop.is_set():
                    try:
                        q.put((bx, by), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            rest_x, rest_y = x[n:], y[n:]

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        while True:
            yield q.get()
    finally:
        stop.set()


# ------------------------------------------------------------------ the step (as in pipeline.train.loop)
def make_step(model, device, amp: str):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossf = torch.nn.CrossEntropyLoss()
    use_amp = device.type == "cuda" and amp != "off"
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp == "fp16" else None

    def step(x_u8, y):
        x = to_float(x_u8, device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            logits = model(x)
        loss = lossf(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss

    return step


def make_predict_step(model, device, amp: str):
    """One prediction batch: softmax scores under inference_mode, copied back to the host."""
    use_amp = device.type == "cuda" and amp != "off"
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16

    def step(x_u8, y):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            p = torch.softmax(model(to_float(x_u8, device, non_blocking=True)).float(), dim=1)
        return p.to("cpu", non_blocking=False)

    return step


def timed(step, batches, steps: int, warmup: int, device) -> float:
    it = iter(batches)
    for _ in range(warmup):
        step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for _ in range(steps):
        x, y = next(it)
        out = step(x, y)
        n += len(y)
    if out.dim() == 0:
        float(out.detach())  # waits for the last step
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=None, help="default: 20 on cuda, 1 on cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on cuda, 16 on cpu")
    ap.add_argument("--rows", type=int, default=None, help="table rows (default: 100000 on cuda, 2000 on cpu)")
    ap.add_argument("--row-group", type=int, default=10000)
    ap.add_argument("--amp", choices=["bf16", "fp16", "off"], default="bf16")
    ap.add_argument("--classes", type=int, default=103)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--storage", choices=["auto", "parquet", "memmap"], default="auto",
                    help="auto: Parquet when pyarrow is installed, else a NumPy memmap")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each path; medians reported")
    ap.add_argument("--model", choices=["resnet18", "lenet"], default="resnet18")
    ap.add_argument("--predict", action="store_true", help="time batch prediction instead of training steps")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    batch = a.batch or (256 if cuda else 16)
    warmup = a.warmup if a.warmup is not None else (20 if cuda else 1)
    rows = a.rows or (100_000 if cuda else 2_000)
    row_group = min(a.row_group, rows)
    if cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_network(a.model, a.classes, 1).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if a.predict:
        model.eval()
        step = make_predict_step(model, device, a.amp)
    else:
        model.train()
        step = make_step(model, device, a.amp)
    res = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
           "decoder": DECODER, "storage": None, "batch": batch, "steps": a.steps, "amp": a.amp if cuda else "off",
           "model": a.model, "mode": "predict" if a.predict else "train", "image": [1, 32, 32]}
    with tempfile.TemporaryDirectory(prefix="gpu-loop-") as tmp:
        data = make_data(Path(tmp), rows, row_group, a.classes, storage=a.storage)
        res["storage"] = data["kind"]
        # the ceiling: a pool of uint8 batches already on the device, cycled
        pool = []
        for x, y in _chunks(data):
            for s in range(0, len(y) - batch + 1, batch):
                pool.append((x[s:s + batch].to(device), y[s:s + batch].to(device)))
                if len(pool) >= 16:
                    break
            if len(pool) >= 16:
                break

        def on_gpu():
            while True:
                yield from pool

        fed_runs, gpu_runs = [], []
        for _ in range(a.repeat):
            gpu_runs.append(timed(step, on_gpu(), a.steps, warmup, device))
            gen = fed_batches(data, batch, pin=cuda)
            fed_runs.append(timed(step, gen, a.steps, warmup, device))
            gen.close()
    res["on_gpu_images_s"] = round(float(np.median(gpu_runs)), 1)
    res["fed_images_s"] = round(float(np.median(fed_runs)), 1)
    res["runs"] = {"on_gpu": [round(v, 1) for v in gpu_runs], "fed": [round(v, 1) for v in fed_runs]}
    res["ratio"] = round(res["fed_images_s"] / res["on_gpu_images_s"], 3)
    res["goal"] = ">= 0.9"
    res["command"] = "python bench/gpu_loop.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
