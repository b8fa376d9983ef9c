"""Parity with the official PyTorch UNITER.

1. The pure-NumPy reference (uniter_tf.testing.numpy_reference) reproduces the official fixture.
2. The Keras model reproduces the official fixture (trivial init weights) within 1e-5.
3. On randomly perturbed weights (non-zero biases, non-unit LayerNorm gains, non-zero mask row 0),
   after convert → save → load through the .npz state-dict path, the Keras model matches the NumPy
   reference within 1e-5.
"""

import os
import shutil

import numpy as np
import pytest

from uniter_tf import cli
from uniter_tf.checkpoints import official, parity
from uniter_tf.testing import numpy_reference

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures", "parity_official")
ATOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
    return parity.load_fixture(FIXTURE_DIR)


def _assert_rows_ok(rows, expected_names):
    failed = {row.name: row.max_abs_error for row in rows if not row.ok}
    assert not failed, f"outputs over tolerance: {failed}"
    assert expected_names <= {row.name for row in rows}


def test_numpy_reference_reproduces_the_official_fixture(fixture):
    reference = numpy_reference.official_outputs(fixture.state_dict, fixture.inputs,
                                                 num_heads=fixture.config.num_attention_heads)
    rows = parity.compare_outputs(reference, fixture.outputs, fixture.inputs, ATOL)
    # compare_outputs compares only names present on both sides: every fixture output must be there.
    _assert_rows_ok(rows, set(fixture.outputs))


def test_reference_helpers_rebuild_the_official_index_tensors(fixture):
    txt_lens, num_bbs = fixture.inputs["txt_lens"], fixture.inputs["num_bbs"]
    max_tl = fixture.inputs["input_ids"].shape[1]
    np.testing.assert_array_equal(numpy_reference.gather_index(txt_lens, num_bbs, max_tl),
                                  fixture.inputs["gather_index"])
    np.testing.assert_array_equal(numpy_reference.attention_masks(txt_lens, num_bbs), fixture.inputs["attn_masks"])
    np.testing.assert_array_equal(numpy_reference.ot_scatter(txt_lens, max_tl, fixture.inputs["attn_masks"].shape[1]),
                                  fixture.inputs["itm_ot_scatter"])


def test_keras_model_matches_the_official_fixture(fixture):
    rows = parity.run_parity(FIXTURE_DIR, atol=ATOL)
    _assert_rows_ok(rows, set(fixture.outputs) | {"mlm_loss_mean", "mrfr_loss_mean", "mrckl_loss_mean"})


def _perturbed_state_dict(state_dict, seed):
    rng = np.random.default_rng(seed)
    perturbed = {}
    for key, value in state_dict.items():
        if key.endswith("LayerNorm.weight") or key.endswith(("norm.weight", "net.2.weight")):
            perturbed[key] = (1.0 + 0.3 * rng.standard_normal(value.shape)).astype(np.float32)
        elif key.endswith(".bias"):
            perturbed[key] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        else:
            perturbed[key] = (value * 2.0 + 0.02 * rng.standard_normal(value.shape)).astype(np.float32)
    # Tied copies must stay identical to their primaries, as in real checkpoints.
    perturbed["cls.predictions.decoder.weight"] = perturbed["uniter.embeddings.word_embeddings.weight"]
    perturbed["feat_regress.weight"] = perturbed["uniter.img_embeddings.img_linear.weight"]
    return perturbed


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_keras_model_matches_numpy_reference_on_perturbed_weights_after_npz_round_trip(fixture, tmp_path, seed):
    state_dict = _perturbed_state_dict(fixture.state_dict, seed)
    assert np.abs(state_dict["uniter.img_embeddings.mask_embedding.weight"][0]).max() > 0
    checkpoint = tmp_path / "perturbed.npz"
    np.savez(checkpoint, **state_dict)
    _, report = official.convert_checkpoint(str(checkpoint), fixture.config, output_dir=str(tmp_path / "converted"),
                                            strict=True)
    assert not report.missing and not report.unexpected
    model = official.load_pretrained(str(tmp_path / "converted"), pretraining=True)

    reference = numpy_reference.official_outputs(state_dict, fixture.inputs,
                                                 num_heads=fixture.config.num_attention_heads)
    # The perturbation really changes the outputs (the check below is not the trivial-init one again).
    assert np.abs(reference["pooled_output"] - fixture.outputs["pooled_output"]).max() > 1e-2
    rows = parity.compare_outputs(parity.model_outputs(model, fixture.inputs), reference, fixture.inputs, ATOL)
    _assert_rows_ok(rows, set(fixture.outputs) | {"mlm_loss_mean", "mrfr_loss_mean", "mrckl_loss_mean"})


def test_parity_cli_passes_on_the_fixture_and_fails_on_corrupted_outputs(tmp_path, capsys):
    assert cli.main(["parity", "--fixture", FIXTURE_DIR]) == 0
    printed = capsys.readouterr().out
    assert "ot_T" in printed and "outputs within tolerance" in printed

    corrupted = tmp_path / "corrupted"
    shutil.copytree(FIXTURE_DIR, corrupted)
    with np.load(corrupted / "outputs.npz") as archive:
        outputs = {key: archive[key] for key in archive.files}
    outputs["itm_scores"] = outputs["itm_scores"] + 1e-3
    np.savez(corrupted / "outputs.npz", **outputs)
    assert cli.main(["parity", "--fixture", str(corrupted), "--atol", "1e-5"]) == 1
    assert "failed: itm_scores" in capsys.readouterr().out


def test_parity_cli_reports_a_missing_fixture_file(tmp_path, capsys):
    assert cli.main(["parity", "--fixture", str(tmp_path)]) == 2  # a user error: the fixture is incomplete
    assert "config.json" in capsys.readouterr().err
