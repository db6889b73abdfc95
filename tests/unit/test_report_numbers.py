"""Numbers as the report and console print them: no negative zero, no "30 to 30"."""
from __future__ import annotations

from pipeline.evaluation import report_sections as rs


def test_values_that_round_to_zero_print_without_a_sign():
    assert rs._ci([-0.0002, 0.1]) == "[0.000, 0.100]"
    assert rs._signed(-0.0004) == "0.000" and rs._signed(0.0123) == "+0.012" and rs._signed(-0.02) == "-0.020"
    assert rs._f(-0.0001) == "0.000" and rs._f(None) == "—"
    assert rs.fixed(-0.00004, 4, signed=True) == "0.0000" and rs.fixed(-0.25, 2) == "-0.25"


def test_equal_class_sizes_are_one_number():
    assert rs.per_class_range([30, 30, 30]) == "30 per class"
    assert rs.per_class_range([1000, 10, 10]) == "10 to 1000 per class"


def test_what_ran_says_30_per_class_for_a_balanced_test_set():
    metrics = {"n_rows": 90, "per_class": [{"support": 30}] * 3}
    run = {"config": {"data": {"synth_preset": "plankton"}, "train": {}, "model": {}},
           "manifest": {"input_counts": {"0": 100, "1": 100, "2": 100}}}
    items = rs.what_ran(run, metrics, None).md
    text = "\n".join(items)
    assert "90, 30 per class (balanced)" in text and "300 in 3 classes, 100 per class" in text
    assert " to " not in text.split("test rows")[1].split("\n")[0]


def test_training_curves_count_epochs_from_one_with_integer_ticks(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = [{"epoch": e, "train_loss": 1.0 / e, "val_macro_f1": 0.1 * e, "val_balanced_accuracy": 0.1 * e,
             "val_recall": [0.5, 0.5]} for e in (1, 2, 3)]     # as train_summary.json holds them
    fig = rs.plot_training(hist, tmp_path / "t.png", lambda f, p: f, plt)
    loss, curves, recall = fig.axes[:3]
    assert list(loss.lines[0].get_xdata()) == [1, 2, 3]
    for ax in (loss, curves, recall):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert recall.images[0].get_extent()[:2] == [0.5, 3.5]
    plt.close(fig)


def test_the_delta_plot_spans_the_intervals_not_minus_one_to_one(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"label": c, "f1_delta": d, "f1_delta_ci": [lo, hi], "verdict": v}
            for c, (d, lo, hi, v) in enumerate([(0.2, 0.1, 0.5, "gained"), (-0.1, -0.3, 0.05, "no clear change"),
                                                (0.0, None, None, "no clear change")])]
    fig = rs.plot_deltas(rows, tmp_path / "d.png", lambda f, p: f, plt)
    lo, hi = fig.axes[0].get_ylim()
    assert -0.4 < lo <= -0.3 and 0.5 <= hi < 0.6
    plt.close(fig)
