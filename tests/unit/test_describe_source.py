"""The data source in words: an image tree is never called synthetic."""
from __future__ import annotations

from pipeline.config import load_config
from pipeline.data.describe_source import describe_source


def _data(*overrides):
    return load_config("conf/images.yaml", list(overrides)).to_dict()["data"]


def test_an_image_tree_is_named_with_what_the_ingest_took_and_rejected():
    ingest = {"images": 19980, "files": 20000, "rejected": 20, "classes": 103,
              "rejected_reasons": {"not an image": 12, "smaller than min_size": 8}}
    d = describe_source(_data("data.images=/data/png"), ingest)
    assert d["kind"] == "image tree" and d["root"] == "/data/png" and d["rejected"] == 20
    assert d["text"] == ("image tree /data/png: 19,980 images in 103 classes ingested from 20,000 files, "
                         "20 rejected (12 not an image; 8 smaller than min_size)")
    assert "synthetic" not in d["text"]


def test_tables_and_the_generator():
    assert describe_source(_data("data.input=/lake/t"))["text"] == "table /lake/t"
    split = describe_source(_data("data.train_path=a", "data.val_path=b", "data.test_path=c"))
    assert split["kind"] == "pre-split tables" and "train a, val b, test c" in split["text"]
    demo = load_config("conf/demo.yaml").to_dict()["data"]
    assert describe_source(demo)["text"] == "synthetic 'plankton_balanced', 112270 rows"
