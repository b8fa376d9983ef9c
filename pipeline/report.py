"""The demo's report: one self-contained HTML page (PNG figures inlined) that opens from disk.

:func:`write_report` lays out what the demo measured and drew; the figures come from
:func:`figures_for_example` (regions with their detected classes, one layer's attention, the word-region
optimal-transport alignment over the image, for one held-out image and caption of the trained model) and
:func:`plot_finetune_curves`. Nothing here needs TFX or a server: the inputs are files and plain dicts.
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

#: Tokens left out of the per-word alignment panels (no visual referent).
_FUNCTION_WORDS = {"[CLS]", "[SEP]", "a", "an", "the", "is", "are", "and", "of", "on", "in", "to", "there", ".",
                   ",", ":", "plain", "background", "picture"}


def _image_tag(path: Optional[str], alt: str, width: str = "100%") -> str:
    if not path or not os.path.exists(path):
        return f"<p class='missing'>({html.escape(alt)}: not available)</p>"
    with open(path, "rb") as handle:
        data = base64.b64encode(handle.read()).decode("ascii")
    return (f"<img alt='{html.escape(alt)}' style='max-width:{width}' "
            f"src='data:image/png;base64,{data}'>")


def _history_from_metrics_log(lines) -> list:
    """``[{"step", "train", "eval"}]`` from a Trainer's ``metrics.jsonl``: each held-out evaluation with the
    training record of the same step (or the latest before it)."""
    train, history = {}, []
    for line in lines:
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("task") == "eval":
            history.append({"step": record["step"], "train": dict(train), "eval": record})
        else:
            train = record
    return history


def plot_finetune_curves(metrics_path: str, output_path: str) -> Optional[str]:
    """Fine-tuning curves from a run's ``metrics.jsonl`` (the Trainer's log: training loss and held-out VQA
    score at each evaluation), or the older ``metrics.json`` (``history``).

    Returns:
        ``output_path``, or None when the run recorded no evaluation.
    """
    from uniter_tf.visualization import _new_figure  # the Agg canvas helper (no pyplot state)

    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path, encoding="utf-8") as handle:
        if metrics_path.endswith(".jsonl"):
            history = _history_from_metrics_log(handle)
        else:
            history = json.load(handle).get("history") or []
    if not history:
        return None
    steps = [entry["step"] for entry in history]
    figure = _new_figure(8.0, 3.2)
    loss_axes = figure.add_subplot(1, 2, 1)
    loss_axes.plot(steps, [entry["train"].get("loss", np.nan) for entry in history], marker="o", label="train batch")
    loss_axes.plot(steps, [(entry.get("eval") or {}).get("loss", np.nan) for entry in history], marker="s",
                   label="held-out")
    loss_axes.set_xlabel("update")
    loss_axes.set_title("VQA fine-tuning: loss", fontsize=10)
    loss_axes.legend(fontsize=8)
    score_axes = figure.add_subplot(1, 2, 2)
    score_axes.plot(steps, [(entry.get("eval") or {}).get("vqa_score", np.nan) for entry in history], marker="s",
                    color="tab:green")
    score_axes.set_ylim(0.0, 1.0)
    score_axes.set_xlabel("update")
    score_axes.set_title("VQA fine-tuning: held-out VQA score", fontsize=10)
    figure.tight_layout()
    figure.savefig(output_path)
    return output_path


def restore_finetuned_backbone(run_dir: str):
    """The backbone of a fine-tuning run (``uniter_tf.training.finetune`` layout), restored from its checkpoint.

    Args:
        run_dir: the run's output directory (``finetune_config.json`` and ``checkpoints/``).

    Raises:
        FileNotFoundError: the run has no config or no checkpoint.
    """
    import tensorflow as tf

    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.training import checkpointing
    from uniter_tf.training.finetune import CHECKPOINT_SUBDIR, CONFIG_FILE_NAME

    config_path = os.path.join(run_dir, CONFIG_FILE_NAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} does not exist: not a fine-tuning run directory")
    with open(config_path, encoding="utf-8") as handle:
        model_config = UniterConfig.from_dict(json.load(handle)["model"])
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINT_SUBDIR))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint under {os.path.join(run_dir, CHECKPOINT_SUBDIR)}")
    backbone = UniterBackbone(model_config)
    backbone({"token_ids": np.zeros([1, 3], np.int32), "text_mask": np.ones([1, 3], np.int32),
              "region_features": np.zeros([1, 1, model_config.region_feature_dim], np.float32),
              "region_positions": np.zeros([1, 1, 7], np.float32), "region_mask": np.ones([1, 1], np.int32)},
             training=False)
    status = tf.train.Checkpoint(backbone=checkpointing.backbone_variable_tree(backbone)).restore(latest)
    status.expect_partial().assert_existing_objects_matched()
    return backbone


def figures_for_example(backbone, image: np.ndarray, regions, caption: str, class_labels: Sequence[str],
                        output_dir: str, layer: Optional[int] = None) -> Dict[str, Any]:
    """Draws, for one image and caption: the regions with their detected classes, one layer's attention, and
    the word-region OT alignment over the image.

    Args:
        backbone: the trained :class:`~uniter_tf.models.backbone.UniterBackbone`.
        image: ``[H, W, 3]`` uint8 pixels of the image the regions came from.
        regions: :class:`uniter_tf.visualization.RegionInputs` with pixel ``boxes``.
        caption: the text.
        class_labels: one label per region (e.g. ``"kite 0.41"``).
        output_dir: where the PNGs go.
        layer: the attention layer to draw (default: the last).

    Returns:
        ``regions_png``, ``attention_png``, ``alignment_png``, ``attention_over_image_png``, ``tokens``,
        ``ot_distance``, ``layer``.
    """
    from uniter_tf import visualization
    from uniter_tf.tokenization import UniterTokenizer

    if regions.boxes is None:
        raise ValueError(f"{regions.source}: the regions carry no pixel boxes to draw")
    os.makedirs(output_dir, exist_ok=True)
    tokenizer = UniterTokenizer()
    config = backbone.config
    token_ids = [tokenizer.cls_id] + list(tokenizer.encode(caption))[:config.max_position_embeddings - 2] + [
            tokenizer.sep_id]
    tokens = tokenizer.ids_to_tokens(token_ids)
    text_length, num_regions = len(token_ids), regions.num_regions
    outputs = backbone(visualization.build_backbone_inputs(token_ids, regions), training=False,
                       output_attention_probs=True)
    valid = text_length + num_regions
    attention = outputs["attention_probs"].numpy()[0][:, :, :valid, :valid]
    layer = attention.shape[0] - 1 if layer is None else int(layer)
    regions_png = visualization.plot_regions_on_image(
            image, regions.boxes, class_labels, os.path.join(output_dir, "regions.png"),
            title=f"{num_regions} regions (detector class, score)")
    attention_png = visualization.plot_attention_layer(
            attention[layer], tokens + regions.labels(with_boxes=False), text_length,
            os.path.join(output_dir, f"attention_layer{layer:02d}.png"), title=f"layer {layer}: attention of every head")
    plan, distance = visualization.transport_plan(outputs["sequence_output"].numpy()[0], text_length, num_regions,
                                                  beta=config.ot_beta, iterations=config.ot_iterations,
                                                  inner_iterations=config.ot_inner_iterations)
    words = [index for index, token in enumerate(tokens) if token.lower() not in _FUNCTION_WORDS
             and not token.startswith("##")][:8]
    alignment_png = visualization.plot_region_weights_on_image(
            image, regions.boxes, [(tokens[index], plan[index]) for index in words],
            os.path.join(output_dir, "ot_alignment.png"),
            title=f"word-region OT alignment (transport mass per region, OT distance {distance:.3f})")
    # The same words' attention to the regions (mean over heads) in the drawn layer.
    region_attention = attention[layer].mean(axis=0)[:, text_length:valid]
    attention_over_image_png = visualization.plot_region_weights_on_image(
            image, regions.boxes, [(tokens[index], region_attention[index]) for index in words],
            os.path.join(output_dir, f"attention_layer{layer:02d}_over_image.png"),
            title=f"layer {layer}: each word's attention to the regions (mean over heads)")
    return {"regions_png": regions_png, "attention_png": attention_png, "alignment_png": alignment_png,
            "attention_over_image_png": attention_over_image_png, "tokens": tokens, "ot_distance": distance,
            "layer": layer}


_STYLE = """
body { font-family: sans-serif; margin: 24px; max-width: 1200px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; }
th { background: #f3f3f3; } .pass { color: #0a7a0a; font-weight: bold; } .fail { color: #b00; font-weight: bold; }
.missing { color: #888; } .note { color: #555; font-size: 13px; } code { background: #f5f5f5; padding: 1px 3px; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; } .figures div { flex: 1 1 45%; }
"""


def _metrics_table(metrics: Mapping[str, float], rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["<table><tr><th>metric</th><th>value</th><th>gate (blessing needs)</th><th>target</th>"
             "<th>gate</th></tr>"]
    for row in rows:
        value = metrics.get(row["metric"])
        gate = row.get("gate")
        passed = value is not None and (gate is None or value >= gate)
        verdict = "" if gate is None else ("<span class='pass'>pass</span>" if passed
                                           else "<span class='fail'>fail</span>")
        target = row.get("target")
        value_text = "-" if value is None else f"{value:.3f}"
        gate_text = "" if gate is None else f"&ge; {gate:.3f}"
        target_text = "" if target is None else f"&ge; {target:.3f}"
        lines.append(f"<tr><td>{html.escape(row['label'])}</td><td>{value_text}</td><td>{gate_text}</td>"
                     f"<td>{target_text}</td><td>{verdict}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _answers_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["<table><tr><th>image</th><th>question</th><th>true answer</th><th>served top answers</th>"
             "<th>VQA score</th></tr>"]
    for row in rows:
        answers = ", ".join(f"{html.escape(answer)} ({score:.2f})" for answer, score in row["answers"])
        lines.append(f"<tr><td>{html.escape(row['image'])}</td><td>{html.escape(row['question'])}</td>"
                     f"<td>{html.escape(row['true'])}</td><td>{answers}</td><td>{row['score']:.2f}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def write_report(path: str, *, title: str, gate: Optional[Mapping[str, Any]], metric_rows: Sequence[Mapping[str, Any]],
                 pushed: Optional[str], curve_pngs: Sequence[str], example: Optional[Mapping[str, Any]],
                 served: Optional[Mapping[str, Any]], notes: Sequence[str] = ()) -> str:
    """Writes the report page.

    Args:
        path: the HTML file.
        title: page title.
        gate: the evaluator's ``metrics.json`` (``metrics``, ``blessed``, ``message``), or None.
        metric_rows: ``{"metric", "label", "gate", "target"}`` per table row.
        pushed: the pushed SavedModel directory, or None.
        curve_pngs: training-curve figures.
        example: :func:`figures_for_example`'s result plus ``image``, ``caption``.
        served: ``{"grpc_score", "rest_score", "num_questions", "evaluator_score", "rows", "itm": {...}}``.
        notes: extra lines at the end.

    Returns:
        ``path``.
    """
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts.append("<h2>Evaluation gate (held-out images)</h2>")
    if gate is None:
        parts.append("<p class='missing'>no gate report</p>")
    else:
        verdict = "pass" if gate.get("blessed") else "fail"
        parts.append(f"<p><span class='{verdict}'>{html.escape(gate.get('message', ''))}</span></p>")
        parts.append(_metrics_table(gate.get("metrics", {}), metric_rows))
        parts.append(f"<p class='note'>pushed: <code>{html.escape(pushed or 'nothing')}</code></p>")
    parts.append("<h2>Training curves</h2><div class='figures'>")
    for png in curve_pngs:
        parts.append(f"<div>{_image_tag(png, os.path.basename(png or 'curve'))}</div>")
    parts.append("</div>")
    if example is not None:
        parts.append(f"<h2>One held-out image: <code>{html.escape(example['image'])}</code></h2>")
        parts.append(f"<p>caption: <b>{html.escape(example['caption'])}</b></p><div class='figures'>")
        parts.append(f"<div>{_image_tag(example.get('regions_png'), 'regions with detected classes')}</div>")
        parts.append(f"<div>{_image_tag(example.get('alignment_png'), 'word-region OT alignment')}</div>")
        parts.append("</div><div class='figures'>")
        parts.append(f"<div>{_image_tag(example.get('attention_png'), 'attention map of one layer')}</div>")
        parts.append(f"<div>{_image_tag(example.get('attention_over_image_png'), 'attention over the image')}</div>")
        parts.append("</div>")
    parts.append("<h2>Served answers (uniter serve: gRPC and REST)</h2>")
    if served is None:
        parts.append("<p class='missing'>the model was not served</p>")
    else:
        parts.append(f"<p>VQA score of the served model over {served['num_questions']} held-out questions: "
                     f"gRPC <b>{served['grpc_score']:.3f}</b>, REST <b>{served['rest_score']:.3f}</b> "
                     f"(evaluator: {served['evaluator_score']:.3f}; question-only baseline "
                     f"{served.get('baseline_score', float('nan')):.3f}).</p>")
        parts.append(_answers_table(served["rows"]))
        itm = served.get("itm")
        if itm:
            parts.append("<table><tr><th>image</th><th>caption</th><th>ITM match probability</th></tr>")
            for caption, score, kind in ((itm["matching"], itm["matching_score"], "matching"),
                                         (itm["mismatched"], itm["mismatched_score"], "mismatched")):
                parts.append(f"<tr><td>{html.escape(itm['image'])}</td><td>{html.escape(caption)} ({kind})</td>"
                             f"<td>{score:.3f}</td></tr>")
            parts.append("</table>")
            if "pairs" in itm:
                parts.append(f"<p>The same pair on every held-out image (its first caption against the next "
                             f"image's): the matching caption scored higher on <b>{itm['pairs_won']}</b> of "
                             f"{itm['pairs']}.</p>")
    for note in notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    parts.append("</body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts))
    return path


#: Flags of a headless Chromium that reads a local file and touches no network or profile.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def screenshot(html_path: str, png_path: str, width: int = 1280, height: int = 2400, chromium: str = "chromium",
               timeout_s: float = 120.0) -> str:
    """Renders a local HTML file in headless Chromium (Debian package ``chromium``) and saves a PNG.

    Args:
        html_path: the page (opened as ``file://``, as a person opening it from disk would).
        png_path: the screenshot.
        width: window width in pixels.
        height: window height in pixels (what is below is cut).
        chromium: the browser executable.
        timeout_s: limit for the browser run.

    Raises:
        FileNotFoundError: no page or no browser; RuntimeError: the browser wrote no screenshot.
    """
    import shutil
    import subprocess
    import tempfile

    if not os.path.exists(html_path):
        raise FileNotFoundError(f"no report at {html_path}")
    executable = shutil.which(chromium)
    if executable is None:
        raise FileNotFoundError(f"{chromium!r} is not installed (Debian: apt-get install -y chromium)")
    profile = tempfile.mkdtemp(prefix="uniter-chromium-")
    try:
        png_path = os.path.abspath(png_path)
        completed = subprocess.run(
                [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png_path}",
                 f"--window-size={width},{height}", "file://" + os.path.abspath(html_path)],
                capture_output=True, text=True, timeout=timeout_s, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if completed.returncode != 0 or not os.path.exists(png_path):
        raise RuntimeError(f"chromium wrote no screenshot (exit {completed.returncode}): {completed.stderr[-1000:]}")
    return png_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m pipeline.report REPORT.html SCREENSHOT.png [--width W --height H]``."""
    import argparse

    parser = argparse.ArgumentParser(description="Screenshot of the demo's report in headless Chromium.")
    parser.add_argument("html")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.html, args.png, args.width, args.height))
    except (FileNotFoundError, RuntimeError) as error:
        print(f"pipeline.report: error: {error}")
        return 2
    return 0


__all__ = ["write_report", "figures_for_example", "plot_finetune_curves", "restore_finetuned_backbone", "screenshot",
           "CHROMIUM_FLAGS"]


if __name__ == "__main__":
    raise SystemExit(main())
