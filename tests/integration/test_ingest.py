"""`imbalance ingest` and encoded-image tables on real Spark, with real images (scikit-learn's digits)."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline.cli import main
from pipeline.data import decode_images
from pipeline.data import images as im
from pipeline.data.ingest import NOT_IN_MANIFEST, ingest_images
from pipeline.errors import InputError
from pipeline.prep.split import split_dataset
from tests.image_trees import write_digits_tree

PER_CLASS = 20


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return root, write_digits_tree(root, per_class=PER_CLASS)


@pytest.fixture(scope="module")
def ingested(spark, tree, tmp_path_factory):
    root, expected = tree
    out = tmp_path_factory.mktemp("ingest") / "out"
    summary = ingest_images(spark, str(root), str(out), size=16, progress=False)
    return out, summary


def _table(spark, out):
    return {r["path"]: r for r in spark.read.parquet(str(out / "data")).collect()}


def test_every_good_file_once_with_its_label(spark, tree, ingested):
    root, expected = tree
    out, summary = ingested
    rows = spark.read.parquet(str(out / "data")).collect()
    assert sorted(r["path"] for r in rows) == sorted(expected["good"])         # each once, none lost
    assert all(r["label"] == expected["good"][r["path"]] for r in rows)
    assert all(len(r["image"]) == 256 for r in rows)
    info = json.loads((out / "data" / "_dataset.json").read_text())
    assert info["image_shape"] == [16, 16] and info["n_classes"] == 10 and info["kind"] == "image"
    assert json.loads((out / "labels.json").read_text())["labels"] == [str(i) for i in range(10)]
    assert summary["class_counts"] == {str(i): PER_CLASS for i in range(10)}
    assert summary["sizes"]["width"]["max"] <= 80 and summary["sizes"]["height"]["min"] >= 8


def test_every_bad_file_is_rejected_with_its_reason(spark, tree, ingested):
    root, expected = tree
    out, summary = ingested
    rejected = {r["path"]: r["reason"] for r in spark.read.parquet(str(out / "rejected")).collect()}
    assert rejected == expected["bad"]
    assert summary["rejected"] == len(expected["bad"])
    assert summary["files"] == len(expected["good"]) + len(expected["bad"])


def test_pixels_match_pillow(spark, tree, ingested):
    root, expected = tree
    out, _ = ingested
    table = _table(spark, out)
    for path in sorted(expected["good"])[:40]:
        img = Image.open(root / path)
        if img.mode in ("LA", "RGBA"):                      # composited on black, as documented
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        ref = np.asarray(ImageOps.pad(img.convert("L"), (16, 16), method=Image.Resampling.BILINEAR, color=0))
        got = np.frombuffer(table[path]["image"], np.uint8).reshape(16, 16)
        np.testing.assert_array_equal(got, ref, err_msg=path)
        assert (table[path]["width"], table[path]["height"]) == Image.open(root / path).size


def test_ids_are_stable_across_a_rerun_and_a_grown_tree(spark, tree, ingested, tmp_path):
    root, expected = tree
    out, _ = ingested
    before = {p: r["id"] for p, r in _table(spark, out).items()}
    grown = tmp_path / "grown"
    shutil.copytree(root, grown)
    more = write_digits_tree(grown, per_class=3, bad=False, start=1500)
    ingest_images(spark, str(grown), str(tmp_path / "again"), size=16, progress=False)
    after = {p: r["id"] for p, r in _table(spark, tmp_path / "again").items()}
    assert set(after) == set(expected["good"]) | set(more["good"])
    assert {p: after[p] for p in before} == before
    assert len(set(after.values())) == len(after)


def test_duplicates_are_reported(spark, tree, tmp_path):
    root, expected = tree
    dup = tmp_path / "dup"
    shutil.copytree(root, dup)
    first = sorted(expected["good"])[0]
    shutil.copy(dup / first, dup / "7" / "copy_of_first.png")
    s = ingest_images(spark, str(dup), str(tmp_path / "out"), size=8, progress=False)
    assert s["duplicates"]["groups"] == 1 and s["duplicates"]["extra_copies"] == 1
    assert s["duplicates"]["groups_across_classes"] == (first.split("/")[0] != "7")
    assert sorted(s["duplicates"]["examples"][0]) == sorted([first, "7/copy_of_first.png"])


def test_manifest_labels(spark, tree, tmp_path):
    root, expected = tree
    listed = sorted(expected["good"])[::2] + ["stray.png"]
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(
        f"{p},{'odd' if p != 'stray.png' and int(p[0]) % 2 else 'even'}\n" for p in listed) + "gone/x.png,even\n")
    s = ingest_images(spark, str(root), str(tmp_path / "out"), size=8, label_from="manifest",
                      manifest=str(tmp_path / "m.csv"), progress=False)
    table = _table(spark, tmp_path / "out")
    assert set(table) == set(listed)                          # the stray file is labelled by the manifest
    assert s["classes"] == 2 and s["manifest_rows_without_file"]["rows"] == 1
    rejected = {r["path"]: r["reason"] for r in spark.read.parquet(str(tmp_path / "out" / "rejected")).collect()}
    assert rejected["3/truncated.png"] == NOT_IN_MANIFEST and len(rejected) + len(table) == s["files"]


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no image files"),
    (lambda p: (p / "a").mkdir() or Image.new("L", (9, 9)).save(p / "a" / "x.png"), "need at least two classes"),
])
def test_empty_or_single_class_tree_is_one_line_exit_2(tmp_path, capsys, make, message):
    root = tmp_path / "root"
    root.mkdir()
    make(root)
    assert main(["ingest", "--images", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()
    assert main(["ingest", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err


def test_decode_images_api_and_encoded_parquet_through_split(spark, tree, tmp_path):
    root, expected = tree
    paths = sorted(expected["good"])[:60]
    jpegs = __import__("sklearn.datasets", fromlist=["x"]).load_sample_images().filenames
    rows = [(i, p.split("/")[0], (root / p).read_bytes()) for i, p in enumerate(paths)]
    rows += [(1000 + i, str(i), Path(f).read_bytes()) for i, f in enumerate(jpegs)]
    rows += [(2000, "3", b"GIF89a-but-not-really"), (2001, "4", (root / "3" / "truncated.png").read_bytes())]
    df = spark.createDataFrame(rows, "id long, label string, image binary")
    images, rejected = decode_images(df, size=12, mode="RGB", resize="crop")
    got = {r["id"]: r for r in images.collect()}
    assert set(got) == {r[0] for r in rows[:-2]}
    ref = np.asarray(ImageOps.fit(Image.open(jpegs[0]).convert("RGB"), (12, 12), method=Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(np.frombuffer(got[1000]["image"], np.uint8).reshape(12, 12, 3), ref)
    assert {r["id"]: r["reason"] for r in rejected.collect()} == {2000: im.NOT_AN_IMAGE, 2001: im.CORRUPT}

    table = tmp_path / "encoded"
    df.write.parquet(str(table))
    summary = split_dataset(spark, str(table), str(tmp_path / "split"), val=0.1, test=0.2, size=8)
    assert summary["rejected"] == 2
    assert summary["rejected_reasons"] == {im.NOT_AN_IMAGE: 1, im.CORRUPT: 1}
    info = json.loads((tmp_path / "split" / "train" / "_dataset.json").read_text())
    assert info["image_shape"] == [8, 8]
    lengths = {len(r[0]) for s in ("train", "val", "test")
               for r in spark.read.parquet(str(tmp_path / "split" / s)).select("image").collect()}
    assert lengths == {64}


def test_synth_png_folders_round_trip(spark, tmp_path):
    from pipeline.data.synth import synthesize_image_folders

    info = synthesize_image_folders(spark, "plankton", 400, 0, str(tmp_path / "tree"), corrupt=6)
    assert info["files"] == 400 and info["corrupt"] == 6
    files = list((tmp_path / "tree").rglob("*.png"))
    assert len(files) == 400 and len({Image.open(f).size for f in files[:50] if f.stat().st_size > 200}) > 10
    s = ingest_images(spark, str(tmp_path / "tree"), str(tmp_path / "out"), size=16, progress=False)
    assert s["rejected"] == 6 and s["images"] == 394 and set(s["rejected_reasons"]) == {
        im.EMPTY, im.NOT_AN_IMAGE, im.CORRUPT}
    with pytest.raises(InputError):
        synthesize_image_folders(spark, "tabular", 10, 0, str(tmp_path / "t2"))


@pytest.mark.parametrize("label_from", ["folder", "manifest"])
def test_python_and_spark_readers_give_the_same_outputs(spark, tree, tmp_path, label_from):
    """Files read by the Python workers (local roots) or by Spark's binaryFile source: same rows."""
    root, expected = tree
    mixed = tmp_path / "mixed"
    shutil.copytree(root, mixed)
    first = mixed / sorted(expected["good"])[0]
    for hidden in ("_staging/a.png", ".cache/b.png", "3/_tmp.png", "3/.c.png"):  # skipped, as Spark does
        (mixed / hidden).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first, mixed / hidden)
    (mixed / "3" / "readme.txt").write_text("not an image extension\n")
    kw = {}
    if label_from == "manifest":
        listed = sorted(expected["good"])[::3] + ["stray.png", "5/empty.png", "4/notes.png"]
        (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(listed)))
        kw = {"label_from": "manifest", "manifest": str(tmp_path / "m.csv")}
    got = {}
    for reader in ("python", "spark"):
        out = tmp_path / reader
        s = ingest_images(spark, str(mixed), str(out), size=12, progress=False, reader=reader, **kw)
        data = sorted(tuple(r) for r in spark.read.parquet(str(out / "data"))
                      .select("id", "label", "image", "path", "width", "height", "sha1").collect())
        rejected = sorted(tuple(r) for r in spark.read.parquet(str(out / "rejected"))
                          .select("path", "label", "id", "sha1", "reason").collect())
        for k in ("seconds", "decode_seconds", "files_per_s", "table"):
            s.pop(k)
        got[reader] = (data, rejected, s, json.loads((out / "data" / "_dataset.json").read_text()))
    assert got["python"] == got["spark"]
    data, rejected, s, _ = got["python"]
    assert not any(p.startswith(("_", ".")) or "/_" in p or "/." in p for p in [r[3] for r in data] + [r[0] for r in rejected])
    if label_from == "folder":
        assert {r[0]: r[4] for r in rejected} == expected["bad"]
