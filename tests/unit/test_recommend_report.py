"""The ``imbalance recommend`` report (pipeline.flows.recommend_report): rendered from small, realistic
inputs and read back with html.parser — its structure, the numbers it shows, the halving chart's lines,
the escaping of user text, and the atomic write."""
from __future__ import annotations

import copy
import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.flows.recommend_report import STOPPED_COLOUR, write_recommend_report

VOID = {"meta", "br", "img", "hr", "input", "link"}
# tags SVG writes self-closed (<rect/>): html.parser reports them as start-end, never as a start
SVG_LEAVES = {"rect", "line", "circle", "polyline", "text", "path", "title"}


class Collector(HTMLParser):
    """Every element (tag, attributes), the text, and tag-balance errors, like a strict reader."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict, bool]] = []   # (tag, attrs, self-closed)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.in_title: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), False))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs), True))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Collector:
    p = Collector()
    p.feed(text)
    p.close()
    return p


def history(values):
    return [{"epoch": i + 1, "value": v} for i, v in enumerate(values)]


@pytest.fixture()
def inputs():
    recommendation = {
        "metric": "macro_f1", "split": "val",
        "best": {"name": "focal_g2", "overrides": {"train.loss": "focal", "train.loss_params": {"gamma": 2.0}}},
        "candidates": [
            {"name": "baseline", "overrides": {}, "score": 0.612, "ci": [0.590, 0.633], "p_best": 0.05,
             "fidelity": {"epochs": 18, "seeds": 3}},
            {"name": "focal_g2", "overrides": {"train.loss": "focal", "train.loss_params": {"gamma": 2.0}},
             "score": 0.655, "ci": [0.631, 0.677], "p_best": 0.62, "fidelity": {"epochs": 18, "seeds": 3}},
            {"name": "ros", "overrides": {"sample.strategy": "oversample"}, "score": 0.641, "ci": [0.618, 0.662],
             "p_best": 0.25, "fidelity": {"epochs": 18, "seeds": 3}},
            {"name": "class_weight", "overrides": {"train.loss": "weighted_ce"}, "score": 0.630,
             "ci": [0.606, 0.651], "p_best": 0.08, "fidelity": {"epochs": 18, "seeds": 3}},
        ],
        "baseline": {"name": "baseline", "score": 0.612, "ci": [0.590, 0.633]},
        "gain": {"mean": 0.043, "ci": [0.012, 0.071]},
        "confident": True,
        "message": "focal_g2 beats the baseline with 95% confidence on this data.",
        "budget": {"unit": "epochs", "asked": None, "used": 310, "grid": 720, "search": 94, "finalists": 216},
        "seconds": {"search": 412.5, "finalists": 903.1, "compare": 3.2, "total": 1318.8},
    }
    trials = [
        {"name": "baseline", "overrides": {}, "history": history([0.41, 0.47, 0.52, 0.55, 0.57, 0.58] + [0.6] * 12),
         "stopped": False, "epochs": 18, "status": "TERMINATED"},
        {"name": "focal_g2", "overrides": {"train.loss": "focal"}, "history": history([0.44 + 0.012 * i
                                                                                      for i in range(18)]),
         "stopped": False, "epochs": 18, "status": "TERMINATED"},
        {"name": "ros", "overrides": {"sample.strategy": "oversample"},
         "history": history([0.40, 0.46, 0.5, 0.53, 0.55, 0.57] + [0.6] * 12),
         "stopped": False, "epochs": 18, "status": "TERMINATED"},
        {"name": "rus", "overrides": {"sample.strategy": "undersample"}, "history": history([0.30, 0.33]),
         "stopped": True, "epochs": 2, "status": "STOPPED"},
        {"name": "smote", "overrides": {"sample.strategy": "smote"},
         "history": history([0.35, 0.40, 0.43, 0.45, 0.46, 0.47]), "stopped": True, "epochs": 6, "status": "STOPPED"},
        {"name": "class_weight", "overrides": {"train.loss": "weighted_ce"},
         "history": history([0.42, 0.48, 0.51, 0.53, 0.55, 0.56]), "stopped": True, "epochs": 6, "status": "STOPPED"},
    ]
    search = {"metric": "val_macro_f1", "max_epochs": 18, "grace_epochs": 2, "reduction_factor": 3,
              "rungs": [2, 6, 18], "trials": trials}
    return recommendation, search


def render(tmp_path: Path, recommendation: dict, search: dict) -> tuple[str, Collector]:
    out = tmp_path / "report.html"
    write_recommend_report(recommendation, search, out)
    text = out.read_text(encoding="utf-8")
    return text, parse(text)


def trial_lines(doc: Collector) -> list[dict]:
    return [a for tag, a, _ in doc.elements if tag == "polyline" and "trial" in a.get("class", "").split()]


def test_report_is_well_formed_and_self_contained(tmp_path, inputs):
    text, doc = render(tmp_path, *inputs)
    assert doc.errors == [] and doc.stack == []
    tags = [t for t, _, _ in doc.elements]
    # the leaderboard, the trial table and the two budget tables; the p_best bars and the halving chart
    assert tags.count("table") == 4 and tags.count("svg") == 2
    assert "script" not in tags and "link" not in tags
    assert not re.search(r"(src|href)\s*=\s*['\"]?https?:", text)
    heads = [t for t in tags if t in ("h1", "h2")]
    assert heads == ["h1", "h2", "h2", "h2", "h2"]
    assert "Recommendation" in "".join(doc.text)


def test_headline_names_the_best_the_gain_and_the_validation_only_comparison(tmp_path, inputs):
    rec, search = inputs
    text, doc = render(tmp_path, rec, search)
    plain = " ".join("".join(doc.text).split())
    assert "Recommended method: focal_g2 (confident" in plain
    assert rec["message"] in plain
    assert "+0.043, 95% interval [+0.012, +0.071]" in plain
    assert "Models are compared on the validation split only; the test split was never read." in plain
    rec2 = dict(rec, confident=False, best={"name": "baseline", "overrides": {}}, highest_scoring="focal_g2",
                message="No method beats the baseline with 95% confidence on this data; the baseline is recommended.")
    text2, doc2 = render(tmp_path, rec2, search)
    plain2 = " ".join("".join(doc2.text).split())
    assert "Recommended method: baseline (not confident" in plain2 and rec2["message"] in plain2
    assert "Highest scoring finalist: focal_g2 (not recommended" in plain2
    assert [cls for cls, _ in leaderboard_rows(text2)] == ["", "", "", "best baseline"]


def leaderboard_rows(text: str) -> list[tuple[str, list[str]]]:
    """(row class, cell texts) of the leaderboard's body, read from the HTML text."""
    table = re.search(r"<table class='leaderboard'>.*?</table>", text, re.S).group(0)
    rows = re.findall(r"<tr class='([^']*)'>(.*?)</tr>", table, re.S)
    return [(cls, [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", body)])
            for cls, body in rows]


def test_leaderboard_is_sorted_by_score_and_marks_best_and_baseline(tmp_path, inputs):
    rec, search = inputs
    text, doc = render(tmp_path, rec, search)
    rows = leaderboard_rows(text)
    assert [cells[2] for _, cells in rows] == ["0.655", "0.641", "0.630", "0.612"]
    assert [cells[0] for _, cells in rows] == ["focal_g2recommended", "ros", "class_weight", "baselinebaseline"]
    by_class = {cls: cells for cls, cells in rows}
    assert by_class["best"][0] == "focal_g2recommended"
    assert by_class["baseline"][0] == "baselinebaseline"
    assert by_class["best"][1] == 'train.loss=focal, train.loss_params={"gamma":2.0}'
    assert by_class["best"][3] == "[0.631, 0.677]" and by_class["best"][4] == "62.0%"
    assert by_class["best"][5] == "18 epochs × 3 seeds"


def test_every_candidate_and_its_p_best_appear_with_proportional_bars(tmp_path, inputs):
    rec, search = inputs
    text, doc = render(tmp_path, rec, search)
    plain = "".join(doc.text)
    expected = {c["name"]: f"{100 * c['p_best']:.1f}%" for c in rec["candidates"]}
    assert all(name in plain for name in expected)
    assert {cells[0].removesuffix("recommended").removesuffix("baseline"): cells[4]
            for _, cells in leaderboard_rows(text)} == expected
    labels = re.findall(r"<text class='pct'[^>]*>([^<]*)</text>", text)
    assert sorted(labels) == sorted(expected.values()) == ["25.0%", "5.0%", "62.0%", "8.0%"]
    bars = [a for tag, a, _ in doc.elements if tag == "rect" and a.get("class") == "pbest-bar"]
    assert len(bars) == len(rec["candidates"])
    widths = sorted(float(b["width"]) for b in bars)
    ps = sorted(c["p_best"] for c in rec["candidates"])
    assert widths[-1] > 0
    for w, p in zip(widths, ps):
        assert w / widths[-1] == pytest.approx(p / ps[-1], abs=0.01)


def test_one_line_per_trial_grey_and_thin_exactly_for_stopped_trials(tmp_path, inputs):
    rec, search = inputs
    _, doc = render(tmp_path, rec, search)
    lines = trial_lines(doc)
    assert len(lines) == len(search["trials"])
    grey = [a for a in lines if a["stroke"] == STOPPED_COLOUR]
    n_stopped = sum(t["stopped"] for t in search["trials"])
    assert len(grey) == n_stopped == 3
    assert all(float(a["stroke-width"]) < 2 for a in grey)
    coloured = [a for a in lines if a["stroke"] != STOPPED_COLOUR]
    assert all(float(a["stroke-width"]) >= 2 for a in coloured)
    assert len({a["stroke"] for a in coloured}) == 3
    # each line has one point per finite history value; the legend names exactly the finished trials
    counts = sorted(len(a["points"].split()) for a in lines)
    assert counts == sorted(len(t["history"]) for t in search["trials"])
    legend = [a for tag, a, _ in doc.elements if tag == "text" and a.get("class") == "legend"]
    assert len(legend) == 3
    rungs = [a for tag, a, _ in doc.elements if tag == "line" and a.get("class") == "rung"]
    assert len(rungs) == 3 and all(a.get("stroke-dasharray") for a in rungs)
    assert len({a["x1"] for a in rungs}) == 3


def test_user_text_is_escaped(tmp_path, inputs):
    rec, search = copy.deepcopy(inputs)
    evil = "<script>alert('x')</script>"
    rec["candidates"][2]["name"] = evil
    rec["candidates"][2]["overrides"] = {"train.loss": "<b>bold</b>"}
    rec["message"] = "a & b <i>"
    search["trials"][2]["name"] = evil
    search["metric"] = "<svg onload=1>"
    text, doc = render(tmp_path, rec, search)
    assert "<script" not in text and "<b>bold" not in text and "<i>" not in text and "<svg onload" not in text
    tags = [t for t, _, _ in doc.elements]
    assert "script" not in tags and "b" in tags and "i" not in tags       # <b> is the report's own
    assert doc.errors == [] and doc.stack == []
    plain = "".join(doc.text)
    assert plain.count(evil) >= 3          # leaderboard, bar label (title), trial table and legend title
    assert "train.loss=<b>bold</b>" in plain and "a & b <i>" in plain


def test_empty_history_and_missing_values_do_not_crash(tmp_path, inputs):
    rec, search = copy.deepcopy(inputs)
    search["trials"].append({"name": "never_reported", "overrides": {}, "history": [], "stopped": True,
                             "epochs": 0, "status": "ERROR", "error": "worker died"})
    search["trials"][0]["history"][3]["value"] = float("nan")
    search["trials"][0]["history"][4]["value"] = None
    search["trials"][1]["history"] = [{"epoch": 1, "value": 0.5}]
    _, doc = render(tmp_path, rec, search)
    lines = trial_lines(doc)
    assert len(lines) == len(search["trials"]) - 1
    assert sorted(len(a["points"].split()) for a in lines)[:2] == [1, 2]
    assert any(len(a["points"].split()) == 16 for a in lines)       # 18 epochs less the NaN and the None
    assert not any("nan" in a["points"].lower() for a in lines)
    plain = "".join(doc.text)
    assert "No validation values recorded for: never_reported." in plain and "ERROR: worker died" in plain

    # a search where no trial reported anything, and a recommendation with only its required keys
    bare = {"trials": [{"name": "t0", "history": []}]}
    _, doc2 = render(tmp_path, {"best": {"name": "baseline"}}, bare)
    assert trial_lines(doc2) == [] and doc2.errors == []
    assert "the test split was never read" in "".join(doc2.text)
    _, doc3 = render(tmp_path, {}, {})
    assert doc3.errors == [] and doc3.stack == []


def test_budget_and_seconds_tables(tmp_path, inputs):
    rec, search = inputs
    text, doc = render(tmp_path, rec, search)
    table = re.search(r"<table class='budget'>.*?</table>", text, re.S).group(0)
    cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", table)]
    assert cells[:3] == ["used (search + finalists)", "310", "43%"]
    assert cells[3:6] == ["asked for", "no limit", "—"]
    assert cells[6:9] == ["a full grid (every candidate at full fidelity)", "720", "100%"]
    seconds = re.search(r"<table class='seconds'>.*?</table>", text, re.S).group(0)
    assert "<td>1318.8</td><td>21 min 59 s</td>" in seconds


def test_write_is_atomic_and_replaces_the_old_file(tmp_path, inputs):
    out = tmp_path / "sub" / "recommendation.html"
    out.parent.mkdir()
    out.write_text("old")
    with open(out) as reader:             # a reader that opened the old file keeps reading the old file
        write_recommend_report(*inputs, out)
        assert reader.read() == "old"
    assert sorted(p.name for p in out.parent.iterdir()) == ["recommendation.html"]   # no temporary left
    assert out.read_text().startswith("<!doctype html>")
    # a render that fails leaves the old file as it was and nothing beside it
    with pytest.raises(RuntimeError, match="cannot print"):
        write_recommend_report({"candidates": [{"name": Unprintable()}]}, {}, out)
    assert out.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in out.parent.iterdir()) == ["recommendation.html"]
    # a directory that does not exist yet is made
    deep = tmp_path / "a" / "b" / "r.html"
    write_recommend_report(*inputs, deep)
    assert deep.is_file() and sorted(p.name for p in deep.parent.iterdir()) == ["r.html"]


class Unprintable:
    def __str__(self):
        raise RuntimeError("cannot print")
