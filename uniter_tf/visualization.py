"""Attention maps and word-region transport plans of a UNITER backbone, as PNG files.

Figures are drawn with matplotlib's object API on the Agg canvas (no display, no global pyplot state):

* :func:`plot_attention_layer` / :func:`plot_attention_maps`: one PNG per layer with one panel per head
  (optionally one PNG per head too), over the valid joint positions ``[CLS] w1 … [SEP] r0 … r(n-1)``;
  lines and coloured axis bands mark the text and region blocks.
* :func:`plot_transport_plan`: the IPOT transport plan of the word-region alignment (WRA), token strings
  on the rows, regions on the columns.

:func:`visualize_example` runs a backbone on one caption and one image's regions and writes all of them;
``uniter visualize`` is its command-line front end. The plan comes from
:func:`uniter_tf.layers.optimal_transport.optimal_transport_distance` on the last layer's contextual
token and region vectors, as in the official ITM+WRA loss (``[CLS]``/``[SEP]`` included).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

TEXT_BLOCK_COLOR = "#1f77b4"
REGION_BLOCK_COLOR = "#d62728"


@dataclasses.dataclass
class RegionInputs:
    """One image's regions.

    Attributes:
        features: ``[n, D]`` float32 region features.
        positions: ``[n, 7]`` float32 ``[x1, y1, x2, y2, w, h, w*h]`` normalised to [0, 1].
        boxes: ``[n, 4]`` pixel boxes when known (used in the region labels), else ``None``.
        source: where they came from, for messages.
    """

    features: np.ndarray
    positions: np.ndarray
    boxes: Optional[np.ndarray] = None
    source: str = "regions"

    def __post_init__(self):
        self.features = np.asarray(self.features, np.float32)
        self.positions = np.asarray(self.positions, np.float32)
        if self.features.ndim != 2 or self.features.shape[0] == 0:
            raise ValueError(f"{self.source}: region features must be [n, D] with n >= 1, got shape "
                             f"{list(self.features.shape)}")
        if self.positions.shape != (self.features.shape[0], 7):
            raise ValueError(f"{self.source}: region positions must be [{self.features.shape[0]}, 7], got shape "
                             f"{list(self.positions.shape)}")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, np.float32)
            if self.boxes.shape != (self.features.shape[0], 4):
                raise ValueError(f"{self.source}: region boxes must be [{self.features.shape[0]}, 4], got shape "
                                 f"{list(self.boxes.shape)}")

    @property
    def num_regions(self) -> int:
        """n."""
        return int(self.features.shape[0])

    def labels(self, with_boxes: bool = True) -> List[str]:
        """Axis labels: ``r3`` or, with pixel boxes known and ``with_boxes``, ``r3 (x1,y1)-(x2,y2)``."""
        if self.boxes is None or not with_boxes:
            return [f"r{index}" for index in range(self.num_regions)]
        return [f"r{index} ({x1:.0f},{y1:.0f})-({x2:.0f},{y2:.0f})"
                for index, (x1, y1, x2, y2) in enumerate(self.boxes.tolist())]


def _first_key(archive, names: Sequence[str]):
    for name in names:
        if name in archive.files:
            return name
    return None


def load_regions_npz(path: str) -> RegionInputs:
    """Reads regions from an ``.npz``.

    Keys: ``features`` (or ``region_features``) ``[n, D]``; and either ``positions`` (or
    ``region_positions``) ``[n, 7]``, or ``boxes`` (or ``region_boxes``) ``[n, 4]`` pixel ``x1, y1, x2, y2``
    with scalar ``image_height`` and ``image_width``.

    Raises:
        FileNotFoundError: no file.
        ValueError: naming the missing or malformed field.
    """
    from uniter_tf.data import boxes as boxes_lib

    import tensorflow as tf

    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"regions file {path!r} does not exist")
    with tf.io.gfile.GFile(path, "rb") as handle:  # any tf.io.gfile filesystem, not only the local disk
        content = io.BytesIO(handle.read())
    with np.load(content, allow_pickle=False) as archive:
        feature_key = _first_key(archive, ("features", "region_features"))
        if feature_key is None:
            raise ValueError(f"{path}: no 'features' (or 'region_features') array; it has {archive.files}")
        features = archive[feature_key]
        position_key = _first_key(archive, ("positions", "region_positions"))
        box_key = _first_key(archive, ("boxes", "region_boxes"))
        boxes = archive[box_key] if box_key else None
        if position_key is not None:
            positions = archive[position_key]
        elif boxes is not None:
            missing = [name for name in ("image_height", "image_width") if name not in archive.files]
            if missing:
                raise ValueError(f"{path}: 'boxes' are in pixels, so {missing} must be given too")
            positions = boxes_lib.position_features(boxes, int(archive["image_height"]), int(archive["image_width"]))
        else:
            raise ValueError(f"{path}: needs 'positions' [n, 7] or 'boxes' [n, 4] with image_height/image_width; "
                             f"it has {archive.files}")
    return RegionInputs(features, positions, boxes, source=path)


def load_regions_tfrecord(path: str, record_index: int = 0,
                          compression: Optional[str] = "GZIP") -> Tuple[RegionInputs, Optional[str]]:
    """Reads one canonical record (docs/architecture.md) and returns its regions and its text.

    Args:
        path: a TFRecord file or glob.
        record_index: which record (0-based) in file order.
        compression: ``"GZIP"`` (the canonical shards) or ``None``.

    Returns:
        ``(regions, text or None)``.

    Raises:
        ValueError: when the files hold fewer records, or a record field is malformed.
    """
    from uniter_tf.data import schema, tfrecord_io

    if record_index < 0:
        raise ValueError(f"record_index must be >= 0, got {record_index}")
    dataset = tfrecord_io.read_examples(path, compression=compression).skip(record_index).take(1)
    serialized = [record.numpy() for record in dataset]
    if not serialized:
        raise ValueError(f"{path}: has no record at index {record_index}")
    decoded = schema.decode_example(serialized[0])
    record_name = decoded.get(schema.EXAMPLE_ID, decoded[schema.IMAGE_ID]).decode("utf-8", "replace")
    regions = RegionInputs(decoded[schema.REGION_FEATURES], decoded[schema.REGION_POSITIONS],
                           decoded[schema.REGION_BOXES], source=f"{path} record {record_name!r}")
    text = decoded.get(schema.TEXT)
    return regions, (text.decode("utf-8") if text is not None else None)


def build_backbone_inputs(token_ids: Sequence[int], regions: RegionInputs) -> Dict[str, np.ndarray]:
    """A batch of one: ``token_ids`` (with ``[CLS]``/``[SEP]``), ``text_mask`` and the region inputs."""
    token_ids = np.asarray(token_ids, np.int32)[np.newaxis]
    return {
            "token_ids": token_ids,
            "text_mask": np.ones_like(token_ids),
            "region_features": regions.features[np.newaxis],
            "region_positions": regions.positions[np.newaxis],
            "region_mask": np.ones((1, regions.num_regions), np.int32),
    }


def transport_plan(sequence_output, text_length: int, num_regions: int, beta: float = 0.5,
                   iterations: int = 50, inner_iterations: int = 1) -> Tuple[np.ndarray, float]:
    """IPOT plan between one example's contextual tokens and regions (compact joint layout).

    Args:
        sequence_output: ``[L, H]`` last-layer output of one example; tokens at ``[0, text_length)``,
            regions at ``[text_length, text_length + num_regions)``.
        text_length: tokens incl. ``[CLS]``/``[SEP]``.
        num_regions: regions.
        beta: IPOT step size.
        iterations: IPOT iterations.
        inner_iterations: IPOT ``k``.

    Returns:
        ``(plan [text_length, num_regions] (token x region), OT distance)``.
    """
    import tensorflow as tf

    from uniter_tf.layers.optimal_transport import optimal_transport_distance

    sequence_output = np.asarray(sequence_output, np.float32)
    if text_length + num_regions > sequence_output.shape[0]:
        raise ValueError(f"text_length {text_length} + num_regions {num_regions} exceed the sequence length "
                         f"{sequence_output.shape[0]}")
    text = sequence_output[np.newaxis, :text_length]
    regions = sequence_output[np.newaxis, text_length:text_length + num_regions]
    distance, _, plan = optimal_transport_distance(
            tf.constant(text), tf.constant(regions), tf.zeros([1, text_length], tf.bool),
            tf.zeros([1, num_regions], tf.bool), beta=beta, iterations=iterations,
            inner_iterations=inner_iterations)
    # The official plan is region x text; rows are tokens here.
    return plan.numpy()[0].T, float(distance.numpy()[0])


# -------------------------------------------------------------------------------------------- drawing

def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure, path: str) -> None:
    """Writes ``figure`` as a PNG through ``tf.io.gfile`` (the output may be on ``gs://`` or ``ram://``)."""
    import tensorflow as tf

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _label_font_size(count: int) -> float:
    return float(np.clip(300.0 / max(count, 1), 4.0, 9.0))


def _mark_blocks(axes, text_length: int, total: int) -> None:
    """Boundary lines between the text and region blocks, and coloured bands along both axes."""
    if 0 < text_length < total:
        axes.axhline(text_length - 0.5, color="white", linewidth=1.2)
        axes.axvline(text_length - 0.5, color="white", linewidth=1.2)
    band = max(total * 0.025, 0.4)
    for start, stop, color in ((0, text_length, TEXT_BLOCK_COLOR), (text_length, total, REGION_BLOCK_COLOR)):
        if stop <= start:
            continue
        axes.add_patch(_rectangle((start - 0.5, -0.5 - band), stop - start, band, color))
        axes.add_patch(_rectangle((-0.5 - band, start - 0.5), band, stop - start, color))
    axes.set_xlim(-0.5 - band, total - 0.5)
    axes.set_ylim(total - 0.5, -0.5 - band)


def _rectangle(corner, width, height, color):
    from matplotlib.patches import Rectangle

    return Rectangle(corner, width, height, facecolor=color, edgecolor="none", clip_on=False)


def plot_attention_layer(probabilities: np.ndarray, labels: Sequence[str], text_length: int, path: str,
                         title: str = "", heads: Optional[Sequence[int]] = None) -> str:
    """Draws the attention of some heads of one layer (one panel each) and saves a PNG.

    Args:
        probabilities: ``[A, L, L]`` (query x key) attention of one example over its valid positions.
        labels: ``L`` axis labels (token strings, then region labels).
        text_length: how many of the positions are text (the rest are regions).
        path: output PNG.
        title: figure title.
        heads: which heads to draw (default all).

    Returns:
        ``path``.
    """
    probabilities = np.asarray(probabilities, np.float32)
    num_heads, length = probabilities.shape[0], probabilities.shape[-1]
    if probabilities.shape[1:] != (length, length) or len(labels) != length:
        raise ValueError(f"attention of shape {list(probabilities.shape)} does not match {len(labels)} labels")
    heads = list(range(num_heads)) if heads is None else list(heads)
    columns = min(4, len(heads))
    rows = math.ceil(len(heads) / columns)
    panel = float(np.clip(length * 0.13, 3.0 if len(heads) > 1 else 4.5, 7.0))
    figure = _new_figure(columns * panel + 1.6, rows * panel + 0.9)
    font_size = _label_font_size(length)
    # One colour scale for all panels, stretched to the largest probability so that diffuse (e.g. untrained)
    # attention still shows its structure; the colour bar gives the scale.
    color_max = max(float(probabilities[heads].max()), 1e-6)
    image = None
    for panel_index, head in enumerate(heads):
        axes = figure.add_subplot(rows, columns, panel_index + 1)
        image = axes.imshow(probabilities[head], cmap="viridis", vmin=0.0, vmax=color_max, interpolation="nearest")
        _mark_blocks(axes, text_length, length)
        if len(heads) > 1:
            axes.set_title(f"head {head}", fontsize=9)
        show_rows = panel_index % columns == 0
        show_columns = panel_index >= len(heads) - columns
        axes.set_yticks(range(length))
        axes.set_yticklabels(labels if show_rows else [], fontsize=font_size)
        axes.set_xticks(range(length))
        axes.set_xticklabels(labels if show_columns else [], fontsize=font_size, rotation=90)
        axes.tick_params(length=0)
        if show_rows:
            axes.set_ylabel("query", fontsize=8)
        if show_columns:
            axes.set_xlabel("key", fontsize=8)
    if image is not None:
        colorbar = figure.colorbar(image, ax=figure.axes, fraction=0.02, pad=0.02)
        colorbar.set_label("attention probability", fontsize=8)
    # Placed above the top row (rows * panel inches tall plus a margin) so it never covers a panel title.
    figure.suptitle(f"{title}\ntext block (blue, {text_length}) | region block (red, {length - text_length})",
                    fontsize=10, y=1.0 + 0.35 / (rows * panel + 0.9))
    _save_figure(figure, path)
    return path


def plot_attention_maps(attention_probs: np.ndarray, labels: Sequence[str], text_length: int, output_dir: str,
                        layers: Optional[Sequence[int]] = None, per_head: bool = False,
                        prefix: str = "attention") -> List[str]:
    """Writes one PNG per layer (all heads) and, with ``per_head``, one PNG per layer and head.

    Args:
        attention_probs: ``[num_layers, A, L, L]`` attention of one example over its valid positions.
        labels: ``L`` axis labels.
        text_length: number of text positions.
        output_dir: where the PNGs go (created).
        layers: which layers (default all).
        per_head: also write ``{prefix}_layer{l}_head{h}.png``.
        prefix: file-name prefix.

    Returns:
        The written paths.
    """
    import tensorflow as tf

    attention_probs = np.asarray(attention_probs)
    num_layers = attention_probs.shape[0]
    layers = list(range(num_layers)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer {layer} does not exist (the model has {num_layers} layers)")
    tf.io.gfile.makedirs(output_dir)
    paths = []
    for layer in layers:
        path = os.path.join(output_dir, f"{prefix}_layer{layer:02d}.png")
        paths.append(plot_attention_layer(attention_probs[layer], labels, text_length, path,
                                          title=f"layer {layer}: attention of every head"))
        if per_head:
            for head in range(attention_probs.shape[1]):
                head_path = os.path.join(output_dir, f"{prefix}_layer{layer:02d}_head{head:02d}.png")
                paths.append(plot_attention_layer(attention_probs[layer], labels, text_length, head_path,
                                                  title=f"layer {layer}, head {head}", heads=[head]))
    return paths


def plot_transport_plan(plan: np.ndarray, token_labels: Sequence[str], region_labels: Sequence[str], path: str,
                        distance: Optional[float] = None) -> str:
    """Draws the word-region transport plan (tokens x regions) and saves a PNG.

    Args:
        plan: ``[num_tokens, num_regions]`` transport mass.
        token_labels: token strings (rows).
        region_labels: region labels (columns).
        path: output PNG.
        distance: the OT distance, shown in the title.

    Returns:
        ``path``.
    """
    plan = np.asarray(plan, np.float32)
    if plan.shape != (len(token_labels), len(region_labels)):
        raise ValueError(f"plan of shape {list(plan.shape)} does not match {len(token_labels)} tokens x "
                         f"{len(region_labels)} regions")
    rows, columns = plan.shape
    figure = _new_figure(float(np.clip(columns * 0.35 + 3.0, 5.0, 16.0)), float(np.clip(rows * 0.3 + 2.5, 4.0, 14.0)))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(plan, cmap="magma", aspect="auto", interpolation="nearest")
    axes.set_yticks(range(rows))
    axes.set_yticklabels(token_labels, fontsize=_label_font_size(rows))
    axes.set_xticks(range(columns))
    axes.set_xticklabels(region_labels, fontsize=_label_font_size(columns), rotation=90)
    axes.set_ylabel("tokens")
    axes.set_xlabel("regions")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    colorbar.set_label("transport mass", fontsize=8)
    title = "word-region alignment: IPOT transport plan"
    if distance is not None:
        title += f" (OT distance {distance:.4f})"
    axes.set_title(title, fontsize=10)
    _save_figure(figure, path)
    return path


# ----------------------------------------------------------------------------------- over the image

def _image_axes(image: np.ndarray, width_inches: float):
    """A figure with one axes showing ``image`` (``[H, W, 3]`` uint8) at its pixel coordinates."""
    height, width = image.shape[:2]
    figure = _new_figure(width_inches, width_inches * height / max(width, 1) + 0.5)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(image, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    return figure, axes


def _box_patch(box, color, linewidth=2.0, alpha=1.0, fill=None):
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = [float(value) for value in box]
    return Rectangle((x1, y1), x2 - x1, y2 - y1, edgecolor=color, linewidth=linewidth, alpha=alpha,
                     facecolor=fill if fill is not None else "none")


def plot_regions_on_image(image: np.ndarray, boxes: np.ndarray, labels: Sequence[str], path: str,
                          title: str = "") -> str:
    """Draws the region boxes with their labels (e.g. detected classes and scores) over the image.

    Args:
        image: ``[H, W, 3]`` uint8 pixels.
        boxes: ``[n, 4]`` pixel boxes ``x1, y1, x2, y2``.
        labels: one label per box.
        path: output PNG.
        title: figure title.

    Returns:
        ``path``.
    """
    from matplotlib import colormaps

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    figure, axes = _image_axes(np.asarray(image), 7.0)
    palette = colormaps["tab10"]
    for index, (box, label) in enumerate(zip(boxes, labels)):
        color = palette(index % 10)
        axes.add_patch(_box_patch(box, color))
        axes.text(float(box[0]) + 2, float(box[1]) + 2, f"r{index} {label}", fontsize=7, color="white",
                  verticalalignment="top", bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "edgecolor": "none"})
    axes.set_title(title, fontsize=10)
    _save_figure(figure, path)
    return path


def plot_region_weights_on_image(image: np.ndarray, boxes: np.ndarray, rows: Sequence[Tuple[str, np.ndarray]],
                                 path: str, title: str = "", columns: int = 4) -> str:
    """One panel per row (e.g. per word): the image with each region shaded by that row's weight.

    Used for a word's optimal-transport mass over the regions (word-region alignment) and a word's
    attention to the regions. Weights are normalised per panel (the largest region is fully shaded and
    outlined), so each panel shows where that word goes; the panel title gives its share of the total.

    Args:
        image: ``[H, W, 3]`` uint8 pixels.
        boxes: ``[n, 4]`` pixel boxes.
        rows: ``(name, weights [n])`` per panel.
        path: output PNG.
        title: figure title.
        columns: panels per row of the figure.

    Returns:
        ``path``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not rows:
        raise ValueError("no rows to draw")
    image = np.asarray(image)
    columns = max(1, min(columns, len(rows)))
    grid_rows = math.ceil(len(rows) / columns)
    height, width = image.shape[:2]
    panel = 3.2
    figure = _new_figure(columns * panel, grid_rows * (panel * height / max(width, 1) + 0.45) + 0.4)
    for index, (name, weights) in enumerate(rows):
        weights = np.asarray(weights, np.float32).reshape(-1)
        if weights.shape[0] != boxes.shape[0]:
            raise ValueError(f"row {name!r} has {weights.shape[0]} weights for {boxes.shape[0]} boxes")
        axes = figure.add_subplot(grid_rows, columns, index + 1)
        axes.imshow(image, interpolation="nearest", alpha=0.8)
        axes.set_xticks([])
        axes.set_yticks([])
        total = float(weights.sum())
        scaled = weights / max(float(weights.max()), 1e-12)
        # Larger boxes first, so small boxes on top stay visible.
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        for region in order:
            axes.add_patch(_box_patch(boxes[region], "#d62728", linewidth=0.6, alpha=0.9,
                                      fill=(0.84, 0.15, 0.16, 0.3 * float(scaled[region]))))
        best = int(np.argmax(weights))
        axes.add_patch(_box_patch(boxes[best], "#ffd400", linewidth=2.5))
        share = float(weights[best]) / total if total > 0 else 0.0
        axes.set_title(f"{name!r}: r{best} ({share:.0%})", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    _save_figure(figure, path)
    return path


# ------------------------------------------------------------------------------------------ pipeline

def visualize_example(backbone, tokenizer, regions: RegionInputs, output_dir: str, caption: Optional[str] = None,
                      word_ids: Optional[Sequence[int]] = None, max_text_length: int = 60,
                      layers: Optional[Sequence[int]] = None, per_head: bool = False) -> Dict[str, object]:
    """Runs ``backbone`` on one caption and one image's regions and writes the attention and OT PNGs.

    Args:
        backbone: a :class:`~uniter_tf.models.backbone.UniterBackbone`.
        tokenizer: a :class:`~uniter_tf.tokenization.UniterTokenizer` matching the backbone's vocabulary.
        regions: the image's regions.
        output_dir: where to write (created).
        caption: the text; tokenized with ``tokenizer``.
        word_ids: WordPiece ids without ``[CLS]``/``[SEP]`` instead of ``caption``.
        max_text_length: longest text incl. ``[CLS]``/``[SEP]`` (longer captions are truncated).
        layers: which layers to draw (default all).
        per_head: also one PNG per head.

    Returns:
        A summary: ``tokens``, ``num_regions``, ``ot_distance``, ``attention_pngs``, ``transport_plan_png``.
    """
    import tensorflow as tf

    config = backbone.config
    if regions.features.shape[1] != config.region_feature_dim:
        raise ValueError(f"{regions.source}: region features have D={regions.features.shape[1]} but the model's "
                         f"UniterConfig.region_feature_dim is {config.region_feature_dim}")
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer vocabulary has {tokenizer.vocab_size} entries but the model's word table "
                         f"(UniterConfig.vocab_size) has {config.vocab_size} rows")
    if (caption is None) == (word_ids is None):
        raise ValueError("give exactly one of caption and word_ids")
    if word_ids is None:
        word_ids = tokenizer.encode(caption)
    max_text_length = min(max_text_length, config.max_position_embeddings)
    token_ids = [tokenizer.cls_id] + [int(i) for i in word_ids][:max_text_length - 2] + [tokenizer.sep_id]
    tokens = tokenizer.ids_to_tokens(token_ids)
    text_length, num_regions = len(token_ids), regions.num_regions

    outputs = backbone(build_backbone_inputs(token_ids, regions), training=False, output_attention_probs=True)
    valid = text_length + num_regions
    attention = outputs["attention_probs"].numpy()[0][:, :, :valid, :valid]
    sequence_output = outputs["sequence_output"].numpy()[0]

    region_labels = regions.labels()
    tf.io.gfile.makedirs(output_dir)
    # Short region names on the square attention maps; boxes on the transport plan's region axis.
    attention_paths = plot_attention_maps(attention, tokens + regions.labels(with_boxes=False), text_length,
                                          output_dir, layers=layers, per_head=per_head)
    plan, distance = transport_plan(sequence_output, text_length, num_regions, beta=config.ot_beta,
                                    iterations=config.ot_iterations, inner_iterations=config.ot_inner_iterations)
    plan_path = plot_transport_plan(plan, tokens, region_labels, os.path.join(output_dir, "transport_plan.png"),
                                    distance)
    return {
            "tokens": tokens,
            "num_regions": num_regions,
            "ot_distance": distance,
            "attention_pngs": attention_paths,
            "transport_plan_png": plan_path,
    }
