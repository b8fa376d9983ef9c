"""Official state-dict loading / export, the `uniter convert` command and load_pretrained."""

import os

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf import cli
from uniter_tf.checkpoints import official, parity, torch_format
from uniter_tf.config import UniterConfig
from uniter_tf.models.backbone import UniterBackbone
from uniter_tf.models.pretraining_model import UniterPretrainingModel
from uniter_tf.testing import numpy_reference

CONFIG = UniterConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, region_feature_dim=12, num_soft_labels=5,
                      unk_token_id=4, cls_token_id=1, sep_token_id=2, mask_token_id=3, first_word_id=5)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
            "token_ids": np.array([[1, 7, 8, 9, 2], [1, 10, 2, 0, 0]], np.int32),
            "text_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32),
            "region_features": rng.random((2, 3, 12), dtype=np.float32),
            "region_positions": rng.random((2, 3, 7), dtype=np.float32),
            "region_mask": np.array([[1, 1, 0], [1, 1, 1]], np.int32),
    }


def _random_official_state_dict(seed=0):
    """An official-layout state dict with random values, from a freshly initialised model."""
    model = UniterPretrainingModel(UniterBackbone(CONFIG))
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.standard_normal(variable.shape).astype(np.float32) * 0.1)
    return official.to_official_state_dict(model)


def test_official_round_trip_is_exact_and_keeps_official_names_and_layout():
    state_dict = _random_official_state_dict()
    assert state_dict["uniter.img_embeddings.img_linear.weight"].shape == (16, 12)  # [out, in]
    assert state_dict["uniter.encoder.layer.1.intermediate.dense.weight"].shape == (32, 16)
    np.testing.assert_array_equal(state_dict["cls.predictions.decoder.weight"],
                                  state_dict["uniter.embeddings.word_embeddings.weight"])
    model = UniterPretrainingModel(UniterBackbone(CONFIG))
    report = official.load_official_state_dict(model, state_dict, strict=True)
    assert sorted(report.tied) == ["cls.predictions.decoder.weight", "feat_regress.weight"]
    exported = official.to_official_state_dict(model)
    assert list(exported) == list(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_tf_style_names_fp16_and_bert_prefix(capsys):
    state_dict = _random_official_state_dict()
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("uniter.img_embeddings.") or key.startswith(("feat_regress", "region_classifier",
                                                                       "itm_output")):
            continue  # a BERT init checkpoint has no image side and no UNITER heads
        key = key.replace("uniter.", "bert.").replace("LayerNorm.weight", "LayerNorm.gamma")
        renamed[key.replace("LayerNorm.bias", "LayerNorm.beta")] = value.astype(np.float16)
    renamed["cls.seq_relationship.weight"] = np.zeros((2, 16), np.float16)

    model = UniterPretrainingModel(UniterBackbone(CONFIG))
    report = official.load_official_state_dict(model, renamed, text_only=True, log=print)
    assert "bert.embeddings.LayerNorm.gamma" in report.renamed
    assert report.renamed["bert.embeddings.LayerNorm.gamma"] == "uniter.embeddings.LayerNorm.weight"
    assert report.unexpected == ["cls.seq_relationship.weight"]
    assert all(key.startswith("uniter.img_embeddings.") for key in report.allowed_missing)
    assert len(report.allowed_missing) == 11
    assert set(report.missing) == {"feat_regress.bias", "feat_regress.net.0.weight", "feat_regress.net.0.bias",
                                   "feat_regress.net.2.weight", "feat_regress.net.2.bias",
                                   "region_classifier.net.0.weight", "region_classifier.net.0.bias",
                                   "region_classifier.net.2.weight", "region_classifier.net.2.bias",
                                   "region_classifier.net.3.weight", "region_classifier.net.3.bias",
                                   "itm_output.weight", "itm_output.bias"}
    np.testing.assert_allclose(model.backbone.text_embeddings.layer_norm.gamma.numpy(),
                               state_dict["uniter.embeddings.LayerNorm.weight"].astype(np.float16), rtol=0)
    printed = capsys.readouterr().out
    assert "cls.seq_relationship.weight" in printed and "missing" in printed


def test_hf_bert_keys_without_prefix_load_text_side_only():
    """The HF-BERT loader's path: bare `encoder.layer.0...` keys, text-only mode, position_ids buffer."""
    state_dict = _random_official_state_dict()
    bare = {key[len("uniter."):]: value for key, value in state_dict.items()
            if key.startswith("uniter.") and not key.startswith("uniter.img_embeddings.")}
    bare["embeddings.position_ids"] = np.arange(32)[None]
    backbone = UniterBackbone(CONFIG)
    report = official.load_official_state_dict(backbone, bare, key_prefix="", text_only=True, strict=True)
    assert not report.missing and not report.unexpected and len(report.allowed_missing) == 11
    np.testing.assert_array_equal(backbone.encoder_layers[0].attention.query.kernel.numpy(),
                                  state_dict["uniter.encoder.layer.0.attention.self.query.weight"].T)
    assert any("position_ids" in note for note in report.notes)
    # Without text_only the image keys are reported as missing.
    report = official.load_official_state_dict(UniterBackbone(CONFIG), bare)
    assert len(report.missing) == 11


def test_shape_mismatch_names_the_key_and_both_shapes_and_tables_can_grow():
    state_dict = _random_official_state_dict()
    # An NLVR2 / VCR style checkpoint: 4 type rows and 10 extra words.
    state_dict["uniter.embeddings.token_type_embeddings.weight"] = np.random.rand(4, 16).astype(np.float32)
    words = np.random.rand(130, 16).astype(np.float32)
    state_dict["uniter.embeddings.word_embeddings.weight"] = words
    state_dict["cls.predictions.decoder.weight"] = words
    state_dict["cls.predictions.bias"] = np.zeros(130, np.float32)
    with pytest.raises(ValueError, match=r"'uniter\.embeddings\.word_embeddings\.weight': checkpoint has \[130, 16\], "
                                         r"the model expects \[120, 16\]"):
        official.load_official_state_dict(UniterPretrainingModel(UniterBackbone(CONFIG)), state_dict)
    grown = official.config_for_state_dict(state_dict, CONFIG)
    assert (grown.vocab_size, grown.type_vocab_size) == (130, 4)
    model = UniterPretrainingModel(UniterBackbone(grown))
    official.load_official_state_dict(model, state_dict, strict=True)
    batch = dict(_batch(), token_type_ids=np.array([[0, 0, 0, 2, 2], [0, 3, 3, 0, 0]], np.int32))
    assert model.backbone(batch)["pooled_output"].shape == (2, 16)


def test_tied_copy_stands_in_for_a_missing_primary_and_differences_are_noted():
    state_dict = _random_official_state_dict()
    words = state_dict.pop("uniter.embeddings.word_embeddings.weight")
    model = UniterPretrainingModel(UniterBackbone(CONFIG))
    report = official.load_official_state_dict(model, state_dict)
    assert not report.missing
    np.testing.assert_array_equal(model.backbone.word_embedding_matrix.numpy(), words)

    state_dict = _random_official_state_dict()
    state_dict["feat_regress.weight"] = state_dict["feat_regress.weight"] + 1.0
    report = official.load_official_state_dict(UniterPretrainingModel(UniterBackbone(CONFIG)), state_dict)
    assert any("feat_regress.weight differs" in note for note in report.notes)


def test_strict_load_refuses_missing_keys():
    state_dict = _random_official_state_dict()
    del state_dict["itm_output.bias"]
    with pytest.raises(ValueError, match="itm_output.bias"):
        official.load_official_state_dict(UniterPretrainingModel(UniterBackbone(CONFIG)), state_dict, strict=True)


def test_read_state_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        official.read_state_dict(str(tmp_path / "nothing.pt"))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown extension"):
        official.read_state_dict(str(tmp_path / "weights.txt"))
    # .pt files are read without torch: a file that is not a checkpoint is named as such.
    (tmp_path / "model.pt").write_bytes(b"not really torch")
    with pytest.raises(ValueError, match=r"model\.pt: not a PyTorch checkpoint"):
        official.read_state_dict(str(tmp_path / "model.pt"))


def test_safetensors_files_are_read(tmp_path):
    from safetensors.numpy import save_file

    state_dict = {"encoder.layer.0.attention.self.query.weight": np.ones((16, 16), np.float32)}
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    read = official.read_state_dict(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(read["encoder.layer.0.attention.self.query.weight"], np.ones((16, 16)))


def test_convert_cli_and_load_pretrained_reproduce_the_outputs(tmp_path, capsys):
    state_dict = _random_official_state_dict(seed=3)
    state_dict["cls.seq_relationship.bias"] = np.zeros(2, np.float32)
    checkpoint = tmp_path / "uniter.npz"
    np.savez(checkpoint, **state_dict)
    config_path = tmp_path / "config.json"
    CONFIG.to_json(config_path)
    output = tmp_path / "converted"
    assert cli.main(["convert", "--checkpoint", str(checkpoint), "--config", str(config_path),
                     "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "unexpected (ignored): 1" in printed and "cls.seq_relationship.bias" in printed
    for name in ("config.json", "backbone.weights.h5", "pretraining.weights.h5", "conversion_report.json"):
        assert (output / name).exists(), name

    direct = UniterPretrainingModel(UniterBackbone(CONFIG))
    official.load_official_state_dict(direct, state_dict)
    batch = dict(_batch(), itm_labels=np.array([1, 0], np.int32))
    expected = direct(batch, task="itm")
    backbone = official.load_pretrained(str(output))
    np.testing.assert_allclose(backbone(batch)["pooled_output"].numpy(), expected["pooled_output"].numpy(), atol=1e-6)
    restored = official.load_pretrained(str(output), pretraining=True)
    np.testing.assert_allclose(restored(batch, task="itm")["itm_logits"].numpy(), expected["itm_logits"].numpy(),
                               atol=1e-6)

    assert cli.main(["convert", "--checkpoint", str(checkpoint), "--config", str(config_path),
                     "--output", str(tmp_path / "strict"), "--strict"]) == 1
    assert "cls.seq_relationship.bias" in capsys.readouterr().err


def test_convert_cli_refuses_a_wrong_preset(tmp_path, capsys):
    checkpoint = tmp_path / "uniter.npz"
    np.savez(checkpoint, **_random_official_state_dict())
    assert cli.main(["convert", "--checkpoint", str(checkpoint), "--config", "tiny", "--output", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err
    assert "shape mismatch" in error and "checkpoint has" in error


def test_load_pretrained_requires_a_converted_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        official.load_pretrained(str(tmp_path))


def test_backbone_weights_map_covers_every_variable_once():
    model = UniterPretrainingModel(UniterBackbone(CONFIG))
    mapped = [id(variable) for variable, _ in official.official_variable_map(model).values()]
    assert len(mapped) == len(set(mapped))
    assert set(mapped) == {id(variable) for variable in model.weights}
    assert isinstance(model.backbone.word_embedding_matrix, tf.Variable) or hasattr(
            model.backbone.word_embedding_matrix, "assign")


# --------------------------------------- real PyTorch files (tests/fixtures: copies of ../shared's files)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")
TORCH_CHECKPOINTS = os.path.join(FIXTURES, "torch_checkpoints")
PARITY_OFFICIAL = os.path.join(FIXTURES, "parity_official")
FIXTURE_CONFIG = os.path.join(PARITY_OFFICIAL, "config.json")
# float16 keeps 11 significant bits, so every weight of the legacy file is its float32 source rounded by
# at most 2**-11 relative (the unit roundoff). The fixture's outputs are LayerNorm-scale (|x| up to ~3) and
# carry that rounding through: 4 × 2**-11 ≈ 2.0e-3 allows it, while anything wrong in reading (a
# transposed or shifted tensor) moves outputs by O(0.1–1). The rounding alone is checked at 1e-5 below.
FP16_ATOL = 4 * 2.0 ** -11


@pytest.mark.parametrize("file_name, atol", [("state_dict_zip_fp32.pt", 1e-5), ("state_dict_legacy_fp16.pt", FP16_ATOL)])
def test_real_torch_files_convert_with_the_fixture_config_and_pass_parity(tmp_path, capsys, file_name, atol):
    checkpoint = os.path.join(TORCH_CHECKPOINTS, file_name)
    output = tmp_path / "converted"
    assert cli.main(["convert", "--checkpoint", checkpoint, "--config", FIXTURE_CONFIG, "--output", str(output),
                     "--strict"]) == 0
    printed = capsys.readouterr().out
    assert "loaded 68 tensors, tied copies 2" in printed
    assert "missing (left at initial values): 0" in printed and "unexpected (ignored): 0" in printed
    fixture = parity.load_fixture(PARITY_OFFICIAL)
    assert UniterConfig.from_json(str(output / "config.json")) == fixture.config

    # `uniter parity --model-dir` checks the converted directory against the fixture's outputs.
    assert cli.main(["parity", "--fixture", PARITY_OFFICIAL, "--model-dir", str(output), "--atol", str(atol)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(fixture.outputs) + 3}/{len(fixture.outputs) + 3} outputs within tolerance" in printed
    model = official.load_pretrained(str(output), pretraining=True)
    rows = parity.run_parity(PARITY_OFFICIAL, atol=atol, model=model)
    assert not [row.name for row in rows if not row.ok] and set(fixture.outputs) <= {row.name for row in rows}
    if "fp16" in file_name:
        # The tolerance is needed: float16 rounding shows at 1e-5 ...
        assert max(row.max_abs_error for row in rows) > 1e-5
        assert cli.main(["parity", "--fixture", PARITY_OFFICIAL, "--model-dir", str(output)]) == 1
        capsys.readouterr()
        # ... and it is the only difference: against the NumPy reference run on the float16-rounded source
        # weights, the converted model matches at 1e-5.
        rounded = {key: value.astype(np.float16) for key, value in fixture.state_dict.items()}
        reference = numpy_reference.official_outputs(rounded, fixture.inputs,
                                                     num_heads=fixture.config.num_attention_heads)
        rows = parity.compare_outputs(parity.model_outputs(model, fixture.inputs), reference, fixture.inputs, 1e-5)
        failed = {row.name: row.max_abs_error for row in rows if not row.ok}
        assert not failed, f"outputs over 1e-5 against the float16-rounded reference: {failed}"


def test_convert_refuses_the_malicious_pickle_without_running_it(tmp_path, capsys, monkeypatch):
    marker = "/tmp/uniter_pwned_by_checkpoint"  # what malicious.pt's os.system call would create
    if os.path.exists(marker):
        os.remove(marker)
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command) or 0)
    assert cli.main(["convert", "--checkpoint", os.path.join(TORCH_CHECKPOINTS, "malicious.pt"), "--config",
                     FIXTURE_CONFIG, "--output", str(tmp_path / "out")]) == 1
    assert "refused to load the global posix.system" in capsys.readouterr().err
    assert not calls and not os.path.exists(marker)
    assert not (tmp_path / "out").exists()


def test_lazy_torch_conversion_matches_eager_arrays_for_views_and_bfloat16(tmp_path):
    """A file with transposed (non-contiguous) kernels, a tied decoder sharing its storage and bfloat16
    values converts to the same weights as the arrays themselves."""
    import ml_dtypes

    state_dict = _random_official_state_dict(seed=5)
    crafted = {}
    for key, value in state_dict.items():
        if value.ndim == 2 and key.endswith("dense.weight"):
            crafted[key] = np.ascontiguousarray(value.T).T  # same values, stored [in, out] with strides (1, out)
        elif key.startswith("itm_output"):
            crafted[key] = value.astype(ml_dtypes.bfloat16)
        else:
            crafted[key] = value
    crafted["cls.predictions.decoder.weight"] = crafted["uniter.embeddings.word_embeddings.weight"]
    checkpoint = tmp_path / "crafted.pt"
    torch_format.save_zip(checkpoint, crafted)
    lazy = official.read_state_dict(str(checkpoint), lazy=True)
    assert not lazy["uniter.pooler.dense.weight"].is_contiguous()

    model, report = official.convert_checkpoint(str(checkpoint), CONFIG, strict=True)
    assert sorted(report.tied) == ["cls.predictions.decoder.weight", "feat_regress.weight"] and not report.notes
    expected = UniterPretrainingModel(UniterBackbone(CONFIG))
    official.load_official_state_dict(expected, {key: np.asarray(value, np.float32) for key, value in crafted.items()})
    for ours, theirs in zip(model.weights, expected.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
    np.testing.assert_array_equal(model.itm_head.classifier.kernel.numpy().T,
                                  state_dict["itm_output.weight"].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_fixture_config_vocab_block_sets_the_special_ids():
    config = UniterConfig.resolve(FIXTURE_CONFIG)
    assert (config.pad_token_id, config.cls_token_id, config.sep_token_id, config.mask_token_id,
            config.first_word_id) == (0, 1, 2, 3, 5)
    assert config.unk_token_id == 4  # the toy vocabulary has no [UNK]: the free id below the first word
    assert config.ot_inner_iterations == 1  # "ot_k"
    explicit = UniterConfig.from_dict({"vocab_size": 200, "vocab": {"unk": 7, "v_range": [8, 200]}})
    assert (explicit.unk_token_id, explicit.first_word_id) == (7, 8)
    with pytest.raises(ValueError, match=r"mask_token_id is 103 but the vocab block says 3"):
        UniterConfig.from_dict({"vocab_size": 120, "mask_token_id": 103, "vocab": {"mask": 3}})
    with pytest.raises(ValueError, match=r"unknown entry vocab\.bos"):
        UniterConfig.from_dict({"vocab": {"bos": 1}})


@pytest.mark.slow
def test_converting_a_base_sized_torch_file_holds_the_model_plus_little(tmp_path):
    """bench/convert_bench.py at uniter-base size (~0.5 GiB): what the conversion adds to the process's
    baseline stays below 2x the file (lazy reads, one tensor at a time). The uniter-large figure, where
    the whole peak is compared, is in docs/performance.md."""
    import json
    import subprocess
    import sys

    result_path = tmp_path / "result.json"
    completed = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "convert_bench.py"), "--preset",
                                "uniter-base", "--workdir", str(tmp_path / "work"), "--json", str(result_path),
                                "--above-baseline"], capture_output=True, text=True, check=False)
    assert result_path.exists(), completed.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result["report"] == "loaded 228 tensors, tied copies 2"
    assert result["peak_minus_baseline_over_checkpoint"] < 2.0, result["summary"]
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_convert_fixes_glibcs_mmap_threshold_on_linux():
    import platform

    from uniter_tf.commands import convert

    if platform.libc_ver()[0] == "glibc":
        assert convert.release_large_blocks() is True
