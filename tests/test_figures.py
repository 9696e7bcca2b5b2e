"""The figures say what their numbers are: thresholds to 3 decimals wherever a probability sits beside them, the
ROC's operating point and interval, the precision-recall prevalence line, calibration counts that never share a
place; 200 dpi."""
import numpy as np

from pneumo_ml import plots

RNG = np.random.default_rng(0)
Y = RNG.integers(0, 2, 80)
P = np.clip(Y * 0.3 + RNG.random(80) * 0.7, 0, 1)


def texts(fig) -> list[str]:
    ax_texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    titles = [ax.get_title() for ax in fig.axes]
    legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    return ax_texts + titles + legends


def test_confusion_titles_give_each_threshold_to_three_decimals_and_the_counts_follow_it():
    fig = plots.confusion_matrices(Y, P, {"threshold": 0.5, "validation threshold": 0.4987}, "M")
    assert [ax.get_title() for ax in fig.axes] == ["threshold 0.500", "validation threshold 0.499"]
    counts = [int(t.get_text()) for t in fig.axes[1].texts]
    c = plots.confusion(Y, P, 0.4987)
    assert counts == [c["tn"], c["fp"], c["fn"], c["tp"]]
    assert fig.dpi == plots.FIGURE_DPI == 200


def test_roc_marks_the_operating_point_and_gives_the_auc_interval():
    fig = plots.roc_curve({"test": (Y, P, 0.81234)}, operating={"test": 0.4987}, intervals={"test": (0.7, 0.9)})
    legend = texts(fig)
    assert "test (AUC 0.812 [0.700, 0.900])" in legend and "test at threshold 0.499" in legend
    point = [line for line in fig.axes[0].lines if line.get_label() == "test at threshold 0.499"][0]
    c = plots.confusion(Y, P, 0.4987)
    assert point.get_xdata()[0] == c["fp"] / (c["fp"] + c["tn"])
    assert point.get_ydata()[0] == c["tp"] / (c["tp"] + c["fn"])


def test_precision_recall_draws_the_prevalence_line():
    fig = plots.pr_curve({"test": (Y, P, 0.7)})
    assert f"no skill: prevalence {Y.mean():.3f}" in texts(fig)


def test_calibration_counts_never_overlap():
    fig = plots.calibration(Y, P)
    fig.canvas.draw()
    labels = [t for t in fig.axes[0].texts if t.get_text().startswith("n=")]
    assert sum(int(t.get_text()[2:]) for t in labels) == len(Y)
    boxes = [t.get_window_extent() for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_the_gradcam_grid_outlines_the_lesion_where_a_mask_exists():
    from pneumo_ml import explain
    images = np.full((2, 32, 32), 100, np.uint8)
    heat = np.zeros((2, 32, 32), np.float32)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 12:40] = 1  # a lesion, given at another size than the image
    fig = explain.gradcam_grid(images, heat, ["with mask", "without"], masks=[mask, None])
    with_mask, without = fig.axes[0], fig.axes[1]
    assert len(with_mask.collections) == 1 and not without.collections
    assert fig.dpi == plots.FIGURE_DPI


def test_an_overlay_keeps_the_radiographs_own_aspect_ratio(tmp_path):
    from PIL import Image

    from pneumo_ml.preprocess import display_image
    path = tmp_path / "wide.png"
    Image.fromarray(RNG.integers(0, 255, (944, 1416), dtype=np.uint8)).save(path)
    shown = display_image(path, 1024)
    assert shown.shape == (683, 1024)  # 944 x 1416 shrunk, not squashed into a square
