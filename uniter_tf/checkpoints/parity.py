"""Parity of the Keras model with the official PyTorch UNITER, on fixtures in the format of
``parity_official/`` (``state_dict.npz``, ``inputs.npz``, ``outputs.npz``, ``config.json``; see the
README shipped in ``tests/fixtures/parity_official/``) and of ``parity_downstream/<head>/`` (the same
files plus an optional ``pre_init.npz``; ``config.json`` names the head).

:func:`run_parity` loads the fixture's state dict into a :class:`UniterPretrainingModel` (pretraining
fixture) or a backbone + head model (downstream fixture, :mod:`uniter_tf.checkpoints.downstream_parity`),
turns the official padded inputs into our batch dicts, runs every task, and compares each output present
in ``outputs.npz`` (sequence outputs at the valid positions, since our joint length is the static T+N).
:func:`run_parity_folder` runs every fixture found in the sub-folders of a folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from uniter_tf.config import UniterConfig

# Outputs compared only at valid joint positions (attn_masks == 1), with their batch axis.
_JOINT_OUTPUTS = ("embedding_output", "sequence_output", "mlm_sequence_output", "mrfr_sequence_output",
                  "mrc_sequence_output")


@dataclasses.dataclass
class ParityRow:
    """One compared output.

    Attributes:
        name: the fixture's output name.
        max_abs_error: max |ours − official| over the compared entries.
        shape: shape of the compared official array.
        ok: ``max_abs_error <= atol``.
    """

    name: str
    max_abs_error: float
    shape: tuple
    ok: bool


@dataclasses.dataclass
class Fixture:
    """A parity fixture read from disk."""

    config: UniterConfig
    raw_config: Dict[str, object]
    state_dict: Dict[str, np.ndarray]
    inputs: Dict[str, np.ndarray]
    outputs: Dict[str, np.ndarray]
    #: ``pre_init.npz`` of downstream fixtures whose training script calls ``init_*()`` (else empty).
    pre_init: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def fixture_config(raw_config: Mapping[str, object]) -> UniterConfig:
    """The :class:`UniterConfig` of a fixture's ``config.json`` (toy vocabulary ids included)."""
    vocab = dict(raw_config.get("vocab", {}))
    first_word, _ = vocab.get("v_range", (106, None))
    special = {"pad_token_id": vocab.get("pad", 0), "cls_token_id": vocab.get("cls", 101),
               "sep_token_id": vocab.get("sep", 102), "mask_token_id": vocab.get("mask", 103),
               "first_word_id": first_word}
    # The toy vocabulary has no [UNK]; any id below the first real word works.
    special["unk_token_id"] = max(0, int(first_word) - 1) if int(raw_config["vocab_size"]) <= 100 else 100
    fields = {key: raw_config[key] for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                               "intermediate_size", "hidden_act", "hidden_dropout_prob",
                                               "attention_probs_dropout_prob", "max_position_embeddings",
                                               "type_vocab_size", "initializer_range") if key in raw_config}
    fields["region_feature_dim"] = int(raw_config.get("img_dim", 2048))
    fields["num_soft_labels"] = int(raw_config.get("img_label_dim", 1601))
    fields["itm_ot_lambda"] = float(raw_config.get("itm_ot_lambda", 0.1))
    fields["ot_beta"] = float(raw_config.get("ot_beta", 0.5))
    fields["ot_iterations"] = int(raw_config.get("ot_iterations", 50))
    fields["ot_inner_iterations"] = int(raw_config.get("ot_k", 1))
    fields.update({key: int(value) for key, value in special.items()})
    return UniterConfig(**fields)


def load_fixture(fixture_dir: str) -> Fixture:
    """Reads a fixture directory.

    Raises:
        FileNotFoundError: naming the first missing file.
    """
    paths = {name: os.path.join(fixture_dir, name) for name in ("config.json", "state_dict.npz", "inputs.npz",
                                                               "outputs.npz")}
    for path in paths.values():
        if not os.path.exists(path):
            raise FileNotFoundError(f"parity fixture file {path!r} is missing")
    with open(paths["config.json"], encoding="utf-8") as handle:
        raw_config = json.load(handle)

    def read(path):
        with np.load(path, allow_pickle=False) as archive:
            return {key: np.asarray(archive[key]) for key in archive.files}

    pre_init_path = os.path.join(fixture_dir, "pre_init.npz")
    return Fixture(config=fixture_config(raw_config), raw_config=raw_config, state_dict=read(paths["state_dict.npz"]),
                   inputs=read(paths["inputs.npz"]), outputs=read(paths["outputs.npz"]),
                   pre_init=read(pre_init_path) if os.path.exists(pre_init_path) else {})


def _scatter_rows(rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Places ``rows [K, D]`` (row-major over ``mask [B, N]``) into a zero ``[B, N, D]`` grid."""
    grid = np.zeros(mask.shape + rows.shape[1:], dtype=np.float32)
    grid[mask] = rows
    return grid


def fixture_batches(inputs: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, np.ndarray]]:
    """Turns the official padded inputs into our per-task batch dicts."""
    txt_lens = np.asarray(inputs["txt_lens"])
    num_bbs = np.asarray(inputs["num_bbs"])
    max_tl = inputs["input_ids"].shape[1]
    max_nbb = inputs["img_feat"].shape[1]
    base = {
            "token_ids": inputs["input_ids"].astype(np.int32),
            "text_mask": (np.arange(max_tl)[None, :] < txt_lens[:, None]).astype(np.int32),
            "region_features": inputs["img_feat"].astype(np.float32),
            "region_positions": inputs["img_pos_feat"].astype(np.float32),
            "region_mask": (np.arange(max_nbb)[None, :] < num_bbs[:, None]).astype(np.int32),
    }
    batches = {"plain": dict(base)}
    if "itm_targets" in inputs:
        batches["itm"] = dict(base, itm_labels=inputs["itm_targets"].astype(np.int32))
    if "mlm_input_ids" in inputs:
        batches["mlm"] = dict(base, token_ids=inputs["mlm_input_ids"].astype(np.int32),
                              mlm_labels=inputs["mlm_txt_labels"].astype(np.int32))
    if "mrfr_img_masks" in inputs:
        masks = inputs["mrfr_img_masks"].astype(bool)
        batches["mrfr"] = dict(base, region_features=inputs["mrfr_img_feat"].astype(np.float32), masked_regions=masks,
                               region_feature_targets=_scatter_rows(inputs["mrfr_feat_targets"], masks))
    if "mrc_img_masks" in inputs:
        masks = inputs["mrc_img_masks"].astype(bool)
        batches["mrckl"] = dict(base, region_features=inputs["mrc_img_feat"].astype(np.float32), masked_regions=masks,
                                soft_labels=_scatter_rows(inputs["mrc_label_targets"], masks))
    return batches


def model_outputs(model, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs ``model`` (a :class:`UniterPretrainingModel`) on a fixture's inputs, in eval mode.

    Returns:
        Our outputs under the fixture's names, reduced to the official row selections (masked rows in
        row-major order). Extra entries ``*_loss_mean`` hold our reduced task losses.
    """
    batches = fixture_batches(inputs)
    ours: Dict[str, np.ndarray] = {}

    def selected(values, weights):
        return np.asarray(values)[np.asarray(weights) > 0]

    plain = model.backbone(batches["plain"], training=False, output_hidden_states=True)
    ours["embedding_output"] = plain["embedding_output"].numpy()
    ours["all_encoder_layers"] = np.transpose(plain["hidden_states"].numpy(), (1, 0, 2, 3))
    ours["sequence_output"] = plain["sequence_output"].numpy()
    ours["pooled_output"] = plain["pooled_output"].numpy()
    if "mlm" in batches:
        mlm = model(batches["mlm"], task="mlm", training=False)
        ours["mlm_sequence_output"] = mlm["sequence_output"].numpy()
        ours["mlm_prediction_scores"] = selected(mlm["mlm_logits"], mlm["mlm_weights"])
        ours["mlm_loss"] = selected(mlm["mlm_token_losses"], mlm["mlm_weights"])
        ours["mlm_loss_mean"] = mlm["loss"].numpy()
    if "mrfr" in batches:
        mrfr = model(batches["mrfr"], task="mrfr", training=False)
        ours["mrfr_sequence_output"] = mrfr["sequence_output"].numpy()
        ours["mrfr_prediction_feat"] = selected(mrfr["mrfr_predictions"], mrfr["mrfr_weights"])
        ours["mrfr_loss"] = selected(mrfr["mrfr_elementwise_losses"], mrfr["mrfr_weights"])
        ours["mrfr_loss_mean"] = mrfr["loss"].numpy()
    if "mrckl" in batches:
        mrc = model(batches["mrckl"], task="mrckl", training=False)
        ours["mrc_sequence_output"] = mrc["sequence_output"].numpy()
        ours["mrckl_prediction_logits"] = selected(mrc["mrc_logits"], mrc["mrc_weights"])
        ours["mrckl_loss"] = selected(mrc["mrckl_elementwise_losses"], mrc["mrc_weights"])
        ours["mrckl_loss_mean"] = mrc["loss"].numpy()
    if "itm" in batches:
        itm = model(batches["itm"], task="itm", training=False)
        labels = batches["itm"]["itm_labels"]
        ours["itm_scores"] = itm["itm_logits"].numpy()
        ours["itm_loss"] = itm["itm_example_losses"].numpy()
        ours["itm_total_loss"] = itm["loss"].numpy()
        if "ot_distance" in itm:
            distance = itm["ot_distance"].numpy()
            ours["ot_dist"] = distance
            ours["ot_pos_dist"] = distance[labels == 1]
            ours["ot_neg_dist"] = distance[labels == 0]
            ours["ot_cost"] = itm["ot_cost"].numpy()
            ours["ot_T"] = itm["ot_plan"].numpy()
            ours["ot_txt_emb"] = itm["ot_text_embeddings"].numpy()
            ours["ot_img_emb"] = itm["ot_region_embeddings"].numpy()
    return ours


def compare_outputs(ours: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                    inputs: Mapping[str, np.ndarray], atol: float = 1e-5) -> List[ParityRow]:
    """Compares every expected output that we produce, at the positions that carry meaning.

    Joint-sequence outputs are compared where ``attn_masks == 1``; ``ot_img_emb`` at real regions.
    The reduced task losses (``*_loss_mean``) are compared with the official reduction of the
    fixture's per-item losses (MRFR / MRC-kl: mean over all elements).
    """
    valid = np.asarray(inputs["attn_masks"]).astype(bool)
    official_length = valid.shape[1]
    rows: List[ParityRow] = []
    expected = dict(expected)
    for name, reduce_from in (("mlm_loss_mean", "mlm_loss"), ("mrfr_loss_mean", "mrfr_loss"),
                              ("mrckl_loss_mean", "mrckl_loss")):
        if reduce_from in expected:
            expected[name] = np.asarray(expected[reduce_from], np.float64).mean()
    for name in sorted(expected):
        if name not in ours:
            continue
        official = np.asarray(expected[name], np.float64)
        mine = np.asarray(ours[name], np.float64)
        if name in _JOINT_OUTPUTS:
            mine, official = mine[:, :official_length][valid], official[valid]
        elif name == "all_encoder_layers":
            mine, official = mine[:, :, :official_length][:, valid], official[:, valid]
        elif name == "ot_img_emb":
            real = ~np.asarray(inputs["itm_img_pad"]).astype(bool)
            mine, official = mine[real], official[real]
        if mine.shape != official.shape:
            rows.append(ParityRow(name, float("inf"), official.shape, False))
            continue
        error = float(np.max(np.abs(mine - official))) if official.size else 0.0
        rows.append(ParityRow(name, error, official.shape, error <= atol))
    return rows


def build_fixture_model(config: UniterConfig, state_dict: Mapping[str, np.ndarray]):
    """A :class:`UniterPretrainingModel` for ``config`` with ``state_dict`` loaded (strict)."""
    from uniter_tf.checkpoints.official import load_official_state_dict  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel

    model = UniterPretrainingModel(UniterBackbone(config))
    load_official_state_dict(model, state_dict, strict=True)
    return model


def run_parity(fixture_dir: str, atol: float = 1e-5, model=None) -> List[ParityRow]:
    """Runs the whole parity check of a fixture directory.

    Args:
        fixture_dir: the fixture.
        atol: the tolerance of every output.
        model: an already loaded model to check instead of one built from the fixture's state dict.

    Returns:
        One :class:`ParityRow` per compared output (downstream fixtures: also one ``init:<key>`` row per
        tensor made by the official ``init_*()`` calls).

    Raises:
        FileNotFoundError: a missing fixture file; ValueError: an unknown head.
    """
    fixture = load_fixture(fixture_dir)
    if fixture.raw_config.get("head") is not None:
        from uniter_tf.checkpoints import downstream_parity  # pylint: disable=import-outside-toplevel

        return downstream_parity.run_head_parity(fixture, fixture.pre_init, atol=atol, model=model)
    if model is None:
        model = build_fixture_model(fixture.config, fixture.state_dict)
    return compare_outputs(model_outputs(model, fixture.inputs), fixture.outputs, fixture.inputs, atol)


def format_rows(rows: List[ParityRow], atol: float) -> str:
    """A table of the rows, one output per line."""
    width = max([28] + [len(row.name) for row in rows])
    lines = [f"{'output':{width}s} {'shape':>18s} {'max abs error':>14s}  (atol {atol:g})"]
    for row in rows:
        lines.append(f"{row.name:{width}s} {str(list(row.shape)):>18s} {row.max_abs_error:14.3e}  "
                     f"{'ok' if row.ok else 'FAIL'}")
    failed = [row.name for row in rows if not row.ok]
    lines.append(f"{len(rows) - len(failed)}/{len(rows)} outputs within tolerance" +
                 (f"; failed: {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)



def fixture_folders(folder: str) -> List[str]:
    """The fixture directories of ``folder``: itself when it holds a ``config.json``, else every direct
    sub-folder that does (sorted by name)."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return [folder]
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"parity fixture folder {folder!r} does not exist")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if os.path.exists(os.path.join(folder, name, "config.json"))]


def fixture_label(fixture_dir: str) -> str:
    """A fixture's name: the head of its ``config.json`` (downstream) or ``pretraining``."""
    with open(os.path.join(fixture_dir, "config.json"), encoding="utf-8") as handle:
        head = json.load(handle).get("head")
    return str(head) if head is not None else "pretraining"


def run_parity_folder(folder: str, atol: float = 1e-5) -> List[Tuple[str, str, Optional[List[ParityRow]], str]]:
    """Runs every fixture of a folder of fixtures (e.g. ``parity_downstream/``).

    Returns:
        One ``(label, fixture_dir, rows or None, error message)`` per fixture, in name order; ``rows`` is
        ``None`` when the fixture could not be run (unknown head, missing file), with the reason.

    Raises:
        FileNotFoundError: when the folder holds no fixture at all.
    """
    fixture_dirs = fixture_folders(folder)
    if not fixture_dirs:
        raise FileNotFoundError(f"no parity fixture (a folder with config.json) in {folder!r}")
    results = []
    for fixture_dir in fixture_dirs:
        label = os.path.basename(os.path.normpath(fixture_dir))
        try:
            label = fixture_label(fixture_dir)
            results.append((label, fixture_dir, run_parity(fixture_dir, atol=atol), ""))
        except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as error:
            results.append((label, fixture_dir, None, str(error)))
    return results


def format_summary_line(label: str, rows: Optional[List[ParityRow]], error: str, atol: float) -> str:
    """One line per fixture: its largest error over every output and whether all are within ``atol``."""
    if rows is None:
        return f"{label:20s} FAIL  {error}"
    if not rows:
        return f"{label:20s} FAIL  no output of the fixture could be compared"
    worst = max(rows, key=lambda row: row.max_abs_error)
    failed = [row.name for row in rows if not row.ok]
    status = "ok  " if not failed else "FAIL"
    detail = f"; failed: {', '.join(failed)}" if failed else ""
    return (f"{label:20s} {status}  largest error {worst.max_abs_error:.3e} ({worst.name}) over {len(rows)} outputs, "
            f"atol {atol:g}{detail}")
