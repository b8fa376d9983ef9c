"""The demo's report page and its figures (pipeline/report.py, uniter_tf/visualization.py), without a pipeline."""

import base64
import json
import re

import numpy as np
import pytest

from pipeline import report as report_lib
from uniter_tf import visualization

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BOXES = np.array([[10, 20, 90, 100], [120, 40, 200, 120], [0, 0, 320, 240]], np.float32)


def _image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)


def _is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_MAGIC


def test_region_figures_are_pngs_and_check_their_inputs(tmp_path):
    path = visualization.plot_regions_on_image(_image(), BOXES, ["kite 0.41", "background", "background"],
                                               str(tmp_path / "regions.png"), title="t")
    assert _is_png(path)
    with pytest.raises(ValueError, match="3 boxes but 2 labels"):
        visualization.plot_regions_on_image(_image(), BOXES, ["a", "b"], str(tmp_path / "x.png"))
    weights = [("red", np.array([0.7, 0.2, 0.1])), ("circle", np.array([0.1, 0.1, 0.8]))]
    assert _is_png(visualization.plot_region_weights_on_image(_image(), BOXES, weights, str(tmp_path / "w.png")))
    with pytest.raises(ValueError, match="row 'red' has 2 weights for 3 boxes"):
        visualization.plot_region_weights_on_image(_image(), BOXES, [("red", np.ones(2))], str(tmp_path / "y.png"))


def test_figures_for_example_with_a_tiny_backbone(tmp_path):
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone

    config = UniterConfig.from_preset("tiny")
    backbone = UniterBackbone(config)
    rng = np.random.default_rng(1)
    regions = visualization.RegionInputs(rng.normal(size=(3, config.region_feature_dim)),
                                         rng.uniform(size=(3, 7)), BOXES, source="test")
    result = report_lib.figures_for_example(backbone, _image(), regions, "A red circle and a blue square.",
                                            ["a", "b", "c"], str(tmp_path))
    for key in ("regions_png", "attention_png", "alignment_png", "attention_over_image_png"):
        assert _is_png(result[key]), key
    assert result["layer"] == config.num_hidden_layers - 1
    assert result["tokens"][0] == "[CLS]" and result["tokens"][-1] == "[SEP]"
    assert result["ot_distance"] >= 0.0


def test_report_page_inlines_figures_and_shows_the_gate(tmp_path):
    png = visualization.plot_regions_on_image(_image(), BOXES, ["a", "b", "c"], str(tmp_path / "r.png"))
    gate = {"blessed": False, "message": "not blessed: itm_accuracy = 0.5000 < threshold 0.7500",
            "metrics": {"itm_accuracy": 0.5, "vqa_score": 0.61, "vqa_baseline_score": 0.33,
                        "vqa_score_over_baseline": 0.28}}
    rows = [{"metric": "itm_accuracy", "label": "ITM accuracy", "gate": 0.75, "target": 0.8},
            {"metric": "vqa_score_over_baseline", "label": "over baseline", "gate": 0.2, "target": 0.25},
            {"metric": "r_mean", "label": "retrieval", "gate": None, "target": None}]
    served = {"grpc_score": 0.61, "rest_score": 0.61, "evaluator_score": 0.61, "baseline_score": 0.33,
              "num_questions": 40,
              "rows": [{"image": "sample_000004.png", "question": "What color is the <circle>?", "true": "red",
                        "answers": [("red", 0.9), ("blue", 0.05)], "score": 1.0}],
              "itm": {"image": "sample_000004.png", "matching": "A red circle.", "mismatched": "A blue square.",
                      "matching_score": 0.93, "mismatched_score": 0.08, "pairs": 50,
                      "pairs_won": 44}}
    path = report_lib.write_report(str(tmp_path / "out" / "report.html"), title="demo", gate=gate, metric_rows=rows,
                                   pushed=None, curve_pngs=[png, str(tmp_path / "missing.png")], example=None,
                                   served=served, notes=["a note"])
    page = open(path, encoding="utf-8").read()
    # Opened from disk: every figure is inline, nothing is fetched.
    assert "src='data:image/png;base64," in page and "http" not in page
    inline = re.search(r"base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert base64.b64decode(inline).startswith(PNG_MAGIC)
    assert "(missing.png: not available)" in page
    # The gate rows: 0.5 fails its 0.75 threshold, 0.28 passes 0.20; no gate means no verdict.
    assert re.search(r"ITM accuracy</td><td>0.500</td><td>&ge; 0.750</td><td>&ge; 0.800</td><td><span class='fail'>",
                     page)
    assert re.search(r"over baseline</td><td>0.280</td><td>&ge; 0.200</td><td>&ge; 0.250</td><td><span class='pass'>",
                     page)
    assert "retrieval</td><td>-</td><td></td><td></td><td></td>" in page
    assert "What color is the &lt;circle&gt;?" in page and "red (0.90), blue (0.05)" in page
    assert "gRPC <b>0.610</b>, REST <b>0.610</b>" in page and "0.930" in page and "0.080" in page
    assert "the matching caption scored higher on <b>44</b> of 50" in page
    assert "pushed: <code>nothing</code>" in page


def test_finetune_curves_from_the_run_history(tmp_path):
    metrics = tmp_path / "metrics.json"
    assert report_lib.plot_finetune_curves(str(metrics), str(tmp_path / "c.png")) is None
    metrics.write_text(json.dumps({"history": [
            {"step": 10, "train": {"loss": 3.0}, "eval": {"loss": 2.5, "vqa_score": 0.3}},
            {"step": 20, "train": {"loss": 1.0}, "eval": {"loss": 1.5, "vqa_score": 0.6}}]}))
    assert _is_png(report_lib.plot_finetune_curves(str(metrics), str(tmp_path / "c.png")))


def test_finetune_curves_from_the_trainer_metrics_log(tmp_path):
    # The fine-tuning run_fn runs the one Trainer: its metrics.jsonl has training windows and "eval" records.
    lines = [{"step": 5, "task": "vqa", "loss": 3.0}, {"step": 10, "task": "vqa", "loss": 2.0},
             {"step": 10, "task": "eval", "loss": 2.5, "vqa_score": 0.3}, {"step": 20, "task": "vqa", "loss": 1.0},
             {"step": 20, "task": "eval", "loss": 1.5, "vqa_score": 0.6}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    history = report_lib._history_from_metrics_log(metrics.read_text().splitlines())
    assert [(entry["step"], entry["train"]["loss"], entry["eval"]["vqa_score"]) for entry in history] == [
            (10, 2.0, 0.3), (20, 1.0, 0.6)]
    assert _is_png(report_lib.plot_finetune_curves(str(metrics), str(tmp_path / "c.png")))
    metrics.write_text(json.dumps(lines[0]) + "\n")
    assert report_lib.plot_finetune_curves(str(metrics), str(tmp_path / "d.png")) is None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    """The page, opened from disk in a real browser, shows its inline figure (not a broken image)."""
    import shutil

    from PIL import Image

    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it with apt-get)")
    # A figure of one flat, saturated colour, so the screenshot can find it.
    flat = np.zeros((240, 320, 3), np.uint8)
    flat[..., 2] = 255
    png = visualization.plot_regions_on_image(flat, BOXES[:1], ["a"], str(tmp_path / "r.png"))
    gate = {"blessed": True, "message": "blessed", "metrics": {"itm_accuracy": 0.9}}
    page = report_lib.write_report(str(tmp_path / "report.html"), title="demo", gate=gate,
                                   metric_rows=[{"metric": "itm_accuracy", "label": "ITM", "gate": 0.75,
                                                 "target": 0.8}],
                                   pushed="/x/1", curve_pngs=[png], example=None, served=None)
    shot = report_lib.screenshot(page, str(tmp_path / "shot.png"), width=1000, height=1400)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape == (1400, 1000, 3)
    blue = (pixels[..., 2] > 200) & (pixels[..., 0] < 60) & (pixels[..., 1] < 60)
    # The figure is drawn at up to the page width: tens of thousands of pure-blue pixels when it loaded.
    assert blue.sum() > 20000, blue.sum()
