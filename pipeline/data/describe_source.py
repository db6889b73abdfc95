"""What data a run read, in words and numbers: the report, ``summary.json`` and MLflow say the same.

A run reads one of four sources (``data`` section): an image tree (``data.images``, ingested by
the source stage, whose ``ingest.json`` counts the files taken and rejected by reason), one table
(``data.input``), pre-split tables (``data.train_path`` / ``val_path`` / ``test_path``), or the
synthetic generator (``data.synth_preset`` and ``data.rows``). Only the last is synthetic.
"""
from __future__ import annotations

from typing import Optional


def describe_source(data: dict, ingest: Optional[dict] = None) -> dict:
    """``{"kind", "text", ...}`` for a config's ``data`` section (a dict) and, for an image tree, its
    ingest summary (``ingest.json``)."""
    if data.get("train_path") or data.get("val_path") or data.get("test_path"):
        return {"kind": "pre-split tables", "train": data.get("train_path"), "val": data.get("val_path"),
                "test": data.get("test_path"),
                "text": f"pre-split tables: train {data.get('train_path')}, val {data.get('val_path')}, "
                        f"test {data.get('test_path')}"}
    if data.get("images"):
        out = {"kind": "image tree", "root": data["images"]}
        text = f"image tree {data['images']}"
        if ingest:
            out |= {"images": ingest["images"], "files": ingest["files"], "rejected": ingest["rejected"],
                    "rejected_reasons": ingest.get("rejected_reasons", {}), "classes": ingest["classes"]}
            reasons = "; ".join(f"{n} {r}" for r, n in out["rejected_reasons"].items())
            text += (f": {ingest['images']:,} images in {ingest['classes']} classes ingested from "
                     f"{ingest['files']:,} files, {ingest['rejected']:,} rejected"
                     + (f" ({reasons})" if reasons else ""))
        return out | {"text": text}
    if data.get("input"):
        return {"kind": "table", "path": data["input"], "text": f"table {data['input']}"}
    return {"kind": "synthetic", "preset": data.get("synth_preset"), "rows": data.get("rows"),
            "text": f"synthetic '{data.get('synth_preset')}', {data.get('rows')} rows"}
