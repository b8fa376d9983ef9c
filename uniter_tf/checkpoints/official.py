"""Official UNITER (PyTorch) state dicts ↔ the Keras models.

* :func:`read_state_dict` reads ``.pt`` / ``.pth`` / ``.bin`` (PyTorch's zip and legacy layouts, without
  torch and without running pickle code: :mod:`.torch_format`), ``.npz`` and ``.safetensors`` files into
  ``{key: numpy array}`` (or :class:`~.torch_format.LazyTensor` values read on demand).
* :func:`load_official_state_dict` copies a state dict into a :class:`UniterBackbone` or a
  :class:`UniterPretrainingModel` and returns a :class:`LoadReport` (loaded / missing / unexpected /
  tied keys). It handles TF-style ``gamma``/``beta`` names, ``bert.*`` init checkpoints (as if
  ``uniter.*``), HF-BERT files without any prefix (``key_prefix=""``), tied weights stored twice,
  fp16 tensors, and refuses shape mismatches with an error naming the key and both shapes.
* :func:`config_for_state_dict` grows ``vocab_size`` / ``type_vocab_size`` (NLVR2 / VCR checkpoints)
  and reads ``region_feature_dim`` / ``num_soft_labels`` from the tensors.
* :func:`to_official_state_dict` is the inverse (official names, PyTorch ``[out, in]`` layout).
* :func:`save_converted` / :func:`load_pretrained` store a converted model as a Keras weights file
  plus the config JSON.

The mask embedding's row 0 is kept as stored; the model never reads it (the official forward zeroes it
before use), so a round trip is exact.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from uniter_tf.checkpoints import torch_format
from uniter_tf.config import UniterConfig

UNITER_PREFIX = "uniter."
# Image-side keys of the backbone: allowed to be missing when loading a text-only (BERT) checkpoint.
IMAGE_KEY_PREFIX = UNITER_PREFIX + "img_embeddings."
# Tied copy → primary key (the official state_dict stores both).
TIED_KEYS = {
        "cls.predictions.decoder.weight": UNITER_PREFIX + "embeddings.word_embeddings.weight",
        "feat_regress.weight": UNITER_PREFIX + "img_embeddings.img_linear.weight",
        # Newer HF BERT files also store the decoder bias, which is the MLM output bias.
        "cls.predictions.decoder.bias": "cls.predictions.bias",
}
# Buffers of HF BERT that carry no weights.
IGNORED_KEYS = ("embeddings.position_ids",)

# transform names: "linear" = PyTorch [out, in] weight ↔ Keras [in, out] kernel; "copy" = same layout.
LINEAR, COPY = "linear", "copy"


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_official_state_dict` did.

    Attributes:
        loaded: official keys copied into a model variable.
        missing: model variables with no key in the state dict (they keep their initial values).
        allowed_missing: missing keys that the caller declared acceptable (e.g. image keys in
            text-only mode).
        unexpected: state-dict keys that map to nothing in the model.
        tied: tied copies (stored twice in official files) checked against their primary.
        renamed: original key → normalised key for every renamed key (gamma/beta, prefixes).
        notes: anything else worth printing (tied copies that differ, ignored buffers).
        reshaped: tables whose model shape was grown to the checkpoint's (NLVR2 / VCR type and word
            tables), one line each naming the key and the config change.
    """

    loaded: List[str] = dataclasses.field(default_factory=list)
    missing: List[str] = dataclasses.field(default_factory=list)
    allowed_missing: List[str] = dataclasses.field(default_factory=list)
    unexpected: List[str] = dataclasses.field(default_factory=list)
    tied: List[str] = dataclasses.field(default_factory=list)
    renamed: Dict[str, str] = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)
    reshaped: List[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        """The report as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def format(self) -> str:
        """A human-readable summary listing the missing and unexpected keys."""
        lines = [f"loaded {len(self.loaded)} tensors, tied copies {len(self.tied)}"]
        for title, keys in (("missing (left at initial values)", self.missing),
                            ("allowed missing", self.allowed_missing), ("unexpected (ignored)", self.unexpected)):
            lines.append(f"{title}: {len(keys)}")
            lines.extend(f"  {key}" for key in keys)
        if self.reshaped:
            lines.append(f"reshaped (model grown to the checkpoint): {len(self.reshaped)}")
            lines.extend(f"  {entry}" for entry in self.reshaped)
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ reading
def read_state_dict(path: str, lazy: bool = False) -> "OrderedDict[str, np.ndarray]":
    """Reads a state dict file into numpy arrays (official key order kept).

    Args:
        path: ``.pt``/``.pth``/``.bin``/``.ckpt`` (``torch.save`` zip or legacy layout, read by
            :func:`torch_format.load`: no torch needed, nothing in the pickle runs), ``.npz`` or
            ``.safetensors``. A ``{"model_state": ...}`` / ``{"state_dict": ...}`` wrapper is unwrapped;
            non-tensor entries of a torch file are dropped. Tensors keep their stored dtype (float16 stays
            float16, bfloat16 is ``ml_dtypes.bfloat16``); loading casts them to the variables' dtype.
        lazy: for torch files, return :class:`torch_format.LazyTensor` values whose bytes are read when
            converted (``np.asarray``), so a conversion holds one tensor at a time.

    Raises:
        FileNotFoundError: no such file.
        torch_format.UnsafeCheckpointError: a torch pickle that names a global outside the allow-list
            (a ``ValueError``; nothing was run).
        ValueError: an unknown extension, a corrupt torch file, or a file that holds no tensors.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            state = OrderedDict((key, np.asarray(archive[key])) for key in archive.files)
    elif extension == ".safetensors":
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

        state = OrderedDict(load_file(path).items())
    elif extension in (".pt", ".pth", ".bin", ".ckpt"):
        loaded = torch_format.load(path, lazy=True)
        for wrapper_key in ("model_state", "state_dict", "model"):
            if isinstance(loaded, Mapping) and wrapper_key in loaded and isinstance(loaded[wrapper_key], Mapping):
                loaded = loaded[wrapper_key]
                break
        if not isinstance(loaded, Mapping):
            raise ValueError(f"checkpoint {path!r} holds a {type(loaded).__name__}, not a state dict")
        state = OrderedDict((key, tensor) for key, tensor in loaded.items()
                            if isinstance(tensor, torch_format.LazyTensor))
        if not lazy:
            state = torch_format.materialize(state)
    else:
        raise ValueError(f"checkpoint {path!r}: unknown extension {extension!r} (expected .pt, .pth, .bin, .npz or "
                         ".safetensors)")
    if not state:
        raise ValueError(f"checkpoint {path!r} holds no tensors")
    return state


# ---------------------------------------------------------------------------------- key normalising
def detect_key_prefix(keys: Iterable[str]) -> str:
    """Guesses the prefix of the backbone keys: ``uniter.``, ``bert.`` or ``""`` (bare HF BertModel)."""
    keys = list(keys)
    for prefix in (UNITER_PREFIX, "bert."):
        if any(key.startswith(prefix) for key in keys):
            return prefix
    if any(key.startswith(("embeddings.", "encoder.", "img_embeddings.", "pooler.")) for key in keys):
        return ""
    return UNITER_PREFIX


def normalize_keys(state_dict: Mapping[str, np.ndarray],
                   key_prefix: Optional[str] = None) -> Tuple["OrderedDict[str, np.ndarray]", Dict[str, str]]:
    """Renames keys to official UNITER pretraining names.

    ``gamma`` → ``weight`` and ``beta`` → ``bias`` (as the official ``from_pretrained``), and backbone
    keys carrying ``key_prefix`` (``bert.``, or ``""`` for bare BERT files) get ``uniter.`` instead.

    Args:
        state_dict: the raw state dict.
        key_prefix: the prefix of backbone keys in this file; ``None`` detects it.

    Returns:
        ``(normalised state dict, {old key: new key} for renamed keys)``.
    """
    if key_prefix is None:
        key_prefix = detect_key_prefix(state_dict)
    backbone_roots = ("embeddings.", "img_embeddings.", "encoder.", "pooler.")
    normalized: "OrderedDict[str, np.ndarray]" = OrderedDict()
    renamed: Dict[str, str] = {}
    for key, value in state_dict.items():
        new_key = key.replace("gamma", "weight").replace("beta", "bias")
        if key_prefix != UNITER_PREFIX:
            if key_prefix and new_key.startswith(key_prefix):
                new_key = UNITER_PREFIX + new_key[len(key_prefix):]
            elif not key_prefix and new_key.startswith(backbone_roots):
                new_key = UNITER_PREFIX + new_key
        if new_key != key:
            renamed[key] = new_key
        # Lazy torch tensors stay lazy: their bytes are read when loaded into a variable.
        normalized[new_key] = value if isinstance(value, torch_format.LazyTensor) else np.asarray(value)
    return normalized, renamed


# ------------------------------------------------------------------------------------- variable map
def _linear(prefix: str, dense) -> Dict[str, tuple]:
    return {f"{prefix}.weight": (dense.kernel, LINEAR), f"{prefix}.bias": (dense.bias, COPY)}


def _layer_norm(prefix: str, layer_norm) -> Dict[str, tuple]:
    return {f"{prefix}.weight": (layer_norm.gamma, COPY), f"{prefix}.bias": (layer_norm.beta, COPY)}


def backbone_variable_map(backbone, prefix: str = UNITER_PREFIX) -> "OrderedDict[str, tuple]":
    """Official key → ``(Keras variable, transform)`` for every backbone variable, in official order."""
    text = backbone.text_embeddings
    region = backbone.region_embeddings
    mapping: "OrderedDict[str, tuple]" = OrderedDict()
    mapping[f"{prefix}embeddings.word_embeddings.weight"] = (text.word_embeddings.embeddings, COPY)
    mapping[f"{prefix}embeddings.position_embeddings.weight"] = (text.position_embeddings.embeddings, COPY)
    mapping[f"{prefix}embeddings.token_type_embeddings.weight"] = (text.token_type_embeddings.embeddings, COPY)
    mapping.update(_layer_norm(f"{prefix}embeddings.LayerNorm", text.layer_norm))
    mapping.update(_linear(f"{prefix}img_embeddings.img_linear", region.img_linear))
    mapping.update(_layer_norm(f"{prefix}img_embeddings.img_layer_norm", region.img_layer_norm))
    mapping.update(_layer_norm(f"{prefix}img_embeddings.pos_layer_norm", region.pos_layer_norm))
    mapping.update(_linear(f"{prefix}img_embeddings.pos_linear", region.pos_linear))
    mapping[f"{prefix}img_embeddings.mask_embedding.weight"] = (region.mask_embedding.embeddings, COPY)
    mapping.update(_layer_norm(f"{prefix}img_embeddings.LayerNorm", region.layer_norm))
    for index, layer in enumerate(backbone.encoder_layers):
        layer_prefix = f"{prefix}encoder.layer.{index}"
        for name in ("query", "key", "value"):
            mapping.update(_linear(f"{layer_prefix}.attention.self.{name}", getattr(layer.attention, name)))
        mapping.update(_linear(f"{layer_prefix}.attention.output.dense", layer.attention_output))
        mapping.update(_layer_norm(f"{layer_prefix}.attention.output.LayerNorm", layer.attention_layer_norm))
        mapping.update(_linear(f"{layer_prefix}.intermediate.dense", layer.intermediate))
        mapping.update(_linear(f"{layer_prefix}.output.dense", layer.output_dense))
        mapping.update(_layer_norm(f"{layer_prefix}.output.LayerNorm", layer.output_layer_norm))
    mapping.update(_linear(f"{prefix}pooler.dense", backbone.pooler.dense))
    return mapping


def pretraining_variable_map(model) -> "OrderedDict[str, tuple]":
    """Official key → ``(variable, transform)`` of a :class:`UniterPretrainingModel` (tied copies excluded)."""
    mapping = backbone_variable_map(model.backbone)
    mapping["cls.predictions.bias"] = (model.mlm_head.output_bias, COPY)
    mapping.update(_linear("cls.predictions.transform.dense", model.mlm_head.transform_dense))
    mapping.update(_layer_norm("cls.predictions.transform.LayerNorm", model.mlm_head.transform_layer_norm))
    mapping["feat_regress.bias"] = (model.mrfr_head.output_bias, COPY)
    mapping.update(_linear("feat_regress.net.0", model.mrfr_head.transform_dense))
    mapping.update(_layer_norm("feat_regress.net.2", model.mrfr_head.transform_layer_norm))
    mapping.update(_linear("region_classifier.net.0", model.mrc_head.transform_dense))
    mapping.update(_layer_norm("region_classifier.net.2", model.mrc_head.transform_layer_norm))
    mapping.update(_linear("region_classifier.net.3", model.mrc_head.classifier))
    mapping.update(_linear("itm_output", model.itm_head.classifier))
    return mapping


def official_variable_map(model) -> "OrderedDict[str, tuple]":
    """The variable map of a backbone, a pretraining model, or any model with a ``backbone`` attribute
    (only its backbone part is mapped; task heads pass their own entries as ``extra_mapping``)."""
    if hasattr(model, "mlm_head"):
        return pretraining_variable_map(model)
    if hasattr(model, "text_embeddings"):
        return backbone_variable_map(model)
    if hasattr(model, "backbone"):
        return backbone_variable_map(model.backbone)
    raise ValueError(f"cannot map official UNITER keys onto {type(model).__name__}: it has no UNITER backbone")


def head_variable_map(model) -> "OrderedDict[str, tuple]":
    """Official key → ``(variable, transform)`` of a task model's downstream head (``model.head`` with an
    ``official_weight_map()``, e.g. ``vqa_output.*``, ``nlvr2_output.*``); empty for other models."""
    head = getattr(model, "head", None)
    if head is None or not hasattr(head, "official_weight_map"):
        return OrderedDict()
    return OrderedDict((key, (variable, LINEAR if transpose else COPY))
                       for key, (variable, transpose) in head.official_weight_map().items())


# ------------------------------------------------------------------------------------------ loading
def _to_official_shape(shape: Sequence[int], transform: str) -> Tuple[int, ...]:
    shape = tuple(int(dim) for dim in shape)
    return shape[::-1] if transform == LINEAR else shape


def config_for_state_dict(state_dict: Mapping[str, np.ndarray], config: UniterConfig,
                          key_prefix: Optional[str] = None) -> UniterConfig:
    """Adapts ``config`` to the tables of a checkpoint.

    Grows ``vocab_size`` and ``type_vocab_size`` to the checkpoint's tables (VCR: 29077 words and 4
    types; NLVR2: 3 types) and takes ``region_feature_dim`` / ``num_soft_labels`` from the tensors.
    Other fields (hidden size, layers) are kept so that a wrong preset still fails loudly at load time.

    Args:
        state_dict: the checkpoint (raw or normalised).
        config: the requested configuration.
        key_prefix: see :func:`normalize_keys`.
    """
    normalized, _ = normalize_keys(state_dict, key_prefix)
    changes = {}
    shape_fields = (
            (UNITER_PREFIX + "embeddings.word_embeddings.weight", 0, "vocab_size"),
            (UNITER_PREFIX + "embeddings.token_type_embeddings.weight", 0, "type_vocab_size"),
            (UNITER_PREFIX + "img_embeddings.img_linear.weight", 1, "region_feature_dim"),
            ("region_classifier.net.3.weight", 0, "num_soft_labels"),
    )
    for key, axis, field_name in shape_fields:
        if key in normalized and normalized[key].ndim == 2:
            size = int(normalized[key].shape[axis])
            if size != getattr(config, field_name):
                changes[field_name] = size
    return config.replace(**changes) if changes else config


def load_official_state_dict(model, state_dict: Mapping[str, np.ndarray], key_prefix: Optional[str] = None,
                             text_only: bool = False, allow_missing: Sequence[str] = (),
                             extra_mapping: Optional[Mapping[str, tuple]] = None, strict: bool = False,
                             log: Optional[Callable[[str], None]] = None) -> LoadReport:
    """Copies an official (or BERT / HF-BERT) state dict into ``model``.

    Args:
        model: a :class:`UniterBackbone`, a :class:`UniterPretrainingModel`, or a model with a
            ``backbone`` attribute (then only backbone keys, plus ``extra_mapping``, are loaded).
        state_dict: ``{key: array}`` in PyTorch layout (fp16 is cast to the variable dtype).
        key_prefix: prefix of the backbone keys in the file: ``"uniter."`` (UNITER checkpoints),
            ``"bert."`` (BERT init checkpoints, loaded as if ``uniter.``), ``""`` (HF ``BertModel``
            safetensors such as ``encoder.layer.0.attention.self.query.weight``); ``None`` detects it.
        text_only: the file has no image side: missing ``uniter.img_embeddings.*`` keys are allowed.
        allow_missing: more official-key prefixes whose absence is allowed.
        extra_mapping: more ``{official key: (variable, "linear" | "copy")}`` entries (task heads).
        strict: raise if any key is missing (and not allowed) or unexpected.
        log: called with the formatted report (e.g. ``print``); nothing is printed when ``None``.

    Returns:
        The :class:`LoadReport`.

    Raises:
        ValueError: a tensor whose shape differs from the model's (naming the key and both shapes), or
            missing/unexpected keys under ``strict``.
    """
    normalized, renamed = normalize_keys(state_dict, key_prefix)
    mapping = official_variable_map(model)
    if extra_mapping:
        mapping.update(extra_mapping)
    report = LoadReport(renamed=renamed)
    allowed_prefixes = tuple(allow_missing) + ((IMAGE_KEY_PREFIX,) if text_only else ())

    assignments = []
    for key, (variable, transform) in mapping.items():
        value = normalized.get(key)
        if value is None:
            # A tied copy can stand in for its missing primary.
            copies = [copy for copy, primary in TIED_KEYS.items() if primary == key and copy in normalized]
            if copies:
                value = normalized[copies[0]]
                report.notes.append(f"{key} taken from its tied copy {copies[0]}")
        if value is None:
            (report.allowed_missing if key.startswith(allowed_prefixes) else report.missing).append(key)
            continue
        expected = _to_official_shape(variable.shape, transform)
        if tuple(value.shape) != expected:
            raise ValueError(f"shape mismatch for {key!r}: checkpoint has {list(value.shape)}, the model expects "
                             f"{list(expected)} (use config_for_state_dict / `uniter convert` to grow vocabulary or "
                             "type tables, or pick the matching --config)")
        assignments.append((variable, value, transform))
        report.loaded.append(key)

    for key, value in normalized.items():
        if key in mapping:
            continue
        primary = TIED_KEYS.get(key)
        if primary is not None and primary in mapping:
            report.tied.append(key)
            # A tied copy sharing its primary's storage (torch files) is equal without reading it.
            same_storage = isinstance(value, torch_format.LazyTensor) and value.same_data(normalized.get(primary))
            if primary in normalized and not same_storage and not np.array_equal(
                    np.asarray(normalized[primary], np.float32), np.asarray(value, np.float32)):
                report.notes.append(f"tied copy {key} differs from {primary}; {primary} was used")
            continue
        if key in IGNORED_KEYS or key.endswith(".position_ids"):
            report.notes.append(f"ignored buffer {key}")
            continue
        report.unexpected.append(key)

    if strict and (report.missing or report.unexpected):
        raise ValueError(f"strict load failed: missing {report.missing}, unexpected {report.unexpected}")
    # Values are read (lazy torch tensors) and cast one variable at a time, after every shape was checked.
    for variable, value, transform in assignments:
        array = np.asarray(value, dtype=np.dtype(variable.dtype))
        variable.assign(array.T if transform == LINEAR else array)
    if log is not None:
        log(report.format())
    return report


def to_official_state_dict(model, include_tied_copies: bool = True,
                           prefix: str = UNITER_PREFIX) -> "OrderedDict[str, np.ndarray]":
    """Exports ``model`` as an official state dict (PyTorch layout, float32 numpy arrays).

    Args:
        model: a backbone, a pretraining model or a model with a ``backbone`` (a task model's official
            head keys, :func:`head_variable_map`, are written too).
        include_tied_copies: also write ``cls.predictions.decoder.weight`` and ``feat_regress.weight``
            (as ``torch.save(model.state_dict())`` does) for pretraining models.
        prefix: prefix of the backbone keys (``"uniter."`` as in task checkpoints; ``""`` for a bare
            ``UniterModel``).
    """
    mapping = official_variable_map(model)
    mapping.update(head_variable_map(model))
    state: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, (variable, transform) in mapping.items():
        array = np.asarray(variable.numpy(), dtype=np.float32)
        if transform == LINEAR:
            array = np.ascontiguousarray(array.T)
        if key.startswith(UNITER_PREFIX):
            key = prefix + key[len(UNITER_PREFIX):]
        state[key] = array
    if include_tied_copies and hasattr(model, "mlm_head"):
        state["cls.predictions.decoder.weight"] = state[prefix + "embeddings.word_embeddings.weight"].copy()
        state["feat_regress.weight"] = state[prefix + "img_embeddings.img_linear.weight"].copy()
    return state


# --------------------------------------------------------------------------------- save and restore
CONFIG_FILE = "config.json"
BACKBONE_WEIGHTS_FILE = "backbone.weights.h5"
PRETRAINING_WEIGHTS_FILE = "pretraining.weights.h5"
REPORT_FILE = "conversion_report.json"
#: Written for a task model (a fine-tuned official head): the head's Keras config and the whole model's weights.
TASK_HEAD_FILE = "task_head.json"
TASK_WEIGHTS_FILE = "task_model.weights.h5"


def save_converted(model, output_dir: str, report: Optional[LoadReport] = None) -> Dict[str, str]:
    """Writes ``config.json``, ``backbone.weights.h5`` and, for a pretraining model,
    ``pretraining.weights.h5``, for a task model (backbone + official downstream head)
    ``task_head.json`` and ``task_model.weights.h5`` (plus ``conversion_report.json`` when a report is
    given).

    Returns:
        name → path of every file written.
    """
    os.makedirs(output_dir, exist_ok=True)
    backbone = model.backbone if hasattr(model, "backbone") else model
    paths = {"config": os.path.join(output_dir, CONFIG_FILE),
             "backbone": os.path.join(output_dir, BACKBONE_WEIGHTS_FILE)}
    backbone.config.to_json(paths["config"])
    backbone.save_weights(paths["backbone"])
    if hasattr(model, "mlm_head"):
        paths["pretraining"] = os.path.join(output_dir, PRETRAINING_WEIGHTS_FILE)
        model.save_weights(paths["pretraining"])
    if hasattr(model, "head"):
        import keras  # pylint: disable=import-outside-toplevel

        paths["task_head"] = os.path.join(output_dir, TASK_HEAD_FILE)
        with open(paths["task_head"], "w", encoding="utf-8") as handle:
            json.dump({"task_name": getattr(model, "task_name", ""),
                       "head": keras.saving.serialize_keras_object(model.head)}, handle, indent=2)
        paths["task_weights"] = os.path.join(output_dir, TASK_WEIGHTS_FILE)
        if not model.built:
            model.build()
        model.save_weights(paths["task_weights"])
    if report is not None:
        paths["report"] = os.path.join(output_dir, REPORT_FILE)
        with open(paths["report"], "w", encoding="utf-8") as handle:
            json.dump(report.to_dict(), handle, indent=2)
    return paths


def load_pretrained(model_dir: str, pretraining: bool = False, **model_kwargs):
    """Rebuilds a converted model from :func:`save_converted`'s directory.

    Args:
        model_dir: the directory.
        pretraining: return a :class:`UniterPretrainingModel` (heads from ``pretraining.weights.h5`` when
            present, freshly initialised otherwise) instead of the :class:`UniterBackbone`.
        **model_kwargs: passed to the backbone constructor (e.g. ``output_attention_probs=True``).

    Raises:
        FileNotFoundError: when the directory lacks the config or the weights.
    """
    # Imported here: the module's numpy-only functions stay usable without building Keras models.
    from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel

    config_path = os.path.join(model_dir, CONFIG_FILE)
    backbone_path = os.path.join(model_dir, BACKBONE_WEIGHTS_FILE)
    for path in (config_path, backbone_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{model_dir!r} is not a converted UNITER directory: {path!r} is missing")
    backbone = UniterBackbone(UniterConfig.from_json(config_path), **model_kwargs)
    pretraining_path = os.path.join(model_dir, PRETRAINING_WEIGHTS_FILE)
    if not pretraining:
        backbone.load_weights(backbone_path)
        return backbone
    model = UniterPretrainingModel(backbone)
    if os.path.exists(pretraining_path):
        model.load_weights(pretraining_path)
    else:
        backbone.load_weights(backbone_path)
    return model


def load_task_model(model_dir: str, **model_kwargs):
    """Rebuilds a converted task model (backbone + official downstream head) from :func:`save_converted`.

    Args:
        model_dir: the directory (with ``task_head.json`` and ``task_model.weights.h5``).
        **model_kwargs: passed to the backbone constructor.

    Returns:
        A :class:`~uniter_tf.models.task_model.TaskModel`.

    Raises:
        FileNotFoundError: when the directory lacks the config, the head or the weights.
    """
    import keras  # pylint: disable=import-outside-toplevel

    from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.task_model import TaskModel  # pylint: disable=import-outside-toplevel

    paths = [os.path.join(model_dir, name) for name in (CONFIG_FILE, TASK_HEAD_FILE, TASK_WEIGHTS_FILE)]
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{model_dir!r} is not a converted UNITER task model: {path!r} is missing")
    with open(paths[1], encoding="utf-8") as handle:
        head_file = json.load(handle)
    # Importing the head modules registers their classes for deserialisation.
    from uniter_tf.models import official_heads  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    head = keras.saving.deserialize_keras_object(head_file["head"])
    if not head.built:  # deserialisation may build it already (Keras' build config)
        head.build()
    task_name = head_file.get("task_name", "")
    model = TaskModel(backbone=UniterBackbone(UniterConfig.from_json(paths[0]), **model_kwargs), head=head,
                      task_name=task_name, name=f"uniter_{task_name}" if task_name else None)
    model.build()
    model.load_weights(paths[2])
    return model


def convert_checkpoint(checkpoint_path: str, config: UniterConfig, output_dir: Optional[str] = None,
                       key_prefix: Optional[str] = None, text_only: bool = False, grow_tables: bool = True,
                       strict: bool = False, log: Optional[Callable[[str], None]] = None):
    """Reads a checkpoint, builds the matching model, loads it and optionally saves it.

    A task model (backbone + head, :mod:`uniter_tf.models.official_heads`) is built when the file holds a
    fine-tuned official head (``vqa_output.*``, ``nlvr2_output.*``, ``rank_output.*``, ``re_output.*``,
    ``vcr_output.*``); else a pretraining model when it holds pretraining-head keys (``cls.*``,
    ``feat_regress.*``, ``region_classifier.*``, ``itm_output.*``), a backbone otherwise.

    Args:
        checkpoint_path: the file (see :func:`read_state_dict`).
        config: the requested config (a preset or JSON).
        output_dir: where to :func:`save_converted`; nothing is written when ``None``.
        key_prefix: see :func:`load_official_state_dict`.
        text_only: see :func:`load_official_state_dict`.
        grow_tables: adapt the config to enlarged word/type tables (:func:`config_for_state_dict`);
            when False a larger table is a shape-mismatch error.
        strict: see :func:`load_official_state_dict`.
        log: receives the config changes and the report text.

    Returns:
        ``(model, report)``.
    """
    from uniter_tf.models.backbone import UniterBackbone  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.pretraining_model import UniterPretrainingModel  # pylint: disable=import-outside-toplevel

    from uniter_tf.models import official_heads  # pylint: disable=import-outside-toplevel
    from uniter_tf.models.task_model import TaskModel  # pylint: disable=import-outside-toplevel

    state_dict = read_state_dict(checkpoint_path, lazy=True)  # torch files: one tensor in memory at a time
    reshaped = []
    if grow_tables:
        grown = config_for_state_dict(state_dict, config, key_prefix)
        table_keys = {"vocab_size": UNITER_PREFIX + "embeddings.word_embeddings.weight",
                      "type_vocab_size": UNITER_PREFIX + "embeddings.token_type_embeddings.weight"}
        for field_name in ("vocab_size", "type_vocab_size", "region_feature_dim", "num_soft_labels"):
            if getattr(grown, field_name) == getattr(config, field_name):
                continue
            change = f"{field_name} {getattr(config, field_name)} -> {getattr(grown, field_name)}"
            if log is not None:
                log(f"config: {change} (from the checkpoint)")
            if field_name in table_keys:
                reshaped.append(f"{table_keys[field_name]}: {change}")
        config = grown
    normalized, _ = normalize_keys(state_dict, key_prefix)
    head_roots = ("cls.predictions.", "feat_regress.", "region_classifier.", "itm_output.")
    backbone = UniterBackbone(config)
    head_name = official_heads.detect_head(normalized, config.hidden_size)
    extra_mapping = None
    if head_name is not None:
        head = official_heads.build_head(head_name, config, normalized)
        model = TaskModel(backbone=backbone, head=head, task_name=head_name, name=f"uniter_{head_name}")
        extra_mapping = official_heads.head_variable_map(head)
        if log is not None:
            log(f"fine-tuned head: {head_name} ({official_heads.get_head_spec(head_name).official_class})")
    elif any(key.startswith(head_roots) for key in normalized):
        model = UniterPretrainingModel(backbone)
    else:
        model = backbone
    report = load_official_state_dict(model, state_dict, key_prefix=key_prefix, text_only=text_only, strict=strict,
                                      extra_mapping=extra_mapping)
    report.reshaped.extend(reshaped)
    if log is not None:
        log(report.format())
    if output_dir is not None:
        save_converted(model, output_dir, report)
    return model, report
