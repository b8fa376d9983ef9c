"""The shared Keras harness (uniter_tf/testing/test_case.py) on every layer, the backbone and the task models.

Each class goes through build / call / output shapes / trainable-weight count / get_config → from_config
(equal config and outputs) / ``dtype="mixed_bfloat16"`` reaching every sublayer, then the config and
``.keras`` round trips; the models also through ``save`` → ``load_model`` and ``save_weights`` →
``load_weights``. The weight counts are those of the official modules (e.g. a BERT layer has 16 tensors).
"""

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf.layers.attention import UniterSelfAttention, additive_attention_bias
from uniter_tf.layers.pooler import UniterPooler
from uniter_tf.layers.region_embeddings import UniterRegionEmbeddings
from uniter_tf.layers.text_embeddings import UniterTextEmbeddings
from uniter_tf.layers.transformer import UniterTransformerLayer
from uniter_tf.models.backbone import UniterBackbone
from uniter_tf.models.itm_rank import ItmRankHead
from uniter_tf.models.nlvr2_paired import Nlvr2PairedHead
from uniter_tf.models.nlvr2_paired_attention import Nlvr2PairedAttentionHead
from uniter_tf.models.nlvr2_triplet import Nlvr2TripletHead
from uniter_tf.models.pretraining_heads import ItmHead, MlmHead, MrcHead, MrfrHead
from uniter_tf.models.pretraining_model import UniterPretrainingModel
from uniter_tf.models.referring_expression import ReferringExpressionHead
from uniter_tf.models.task_model import TaskModel
from uniter_tf.models.vcr import VcrHead
from uniter_tf.models.vqa import VqaHead
from uniter_tf.testing import test_case
from uniter_tf.testing.test_case import TINY_CONFIG, tiny_backbone_inputs

H = TINY_CONFIG.hidden_size  # 16
A = TINY_CONFIG.num_attention_heads  # 2
RNG = np.random.default_rng(0)
HIDDEN = RNG.standard_normal((2, 5, H)).astype(np.float32)
BIAS = additive_attention_bias(tf.constant([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), tf.float32)
# One BERT layer: Q, K, V, attention output, 2 LayerNorms, intermediate, output: 8 kernels/biases pairs.
LAYER_WEIGHTS = 16
# Text (3 tables + LN) 5, regions (2 dense + 3 LN + mask table) 11, pooler 2.
BACKBONE_WEIGHTS = 5 + 11 + LAYER_WEIGHTS * TINY_CONFIG.num_hidden_layers + 2

LAYER_CASES = {
        "self_attention": (UniterSelfAttention, {"hidden_size": H, "num_attention_heads": A}, (HIDDEN, BIAS), None,
                           ((2, 5, H), (2, A, 5, 5)), 6),
        "transformer_layer": (UniterTransformerLayer, {"hidden_size": H, "num_attention_heads": A,
                                                       "intermediate_size": 32},
                              (HIDDEN, BIAS), None, ((2, 5, H), (2, A, 5, 5)), LAYER_WEIGHTS),
        "text_embeddings": (UniterTextEmbeddings, {"vocab_size": 120, "hidden_size": H, "max_position_embeddings": 32,
                                                   "type_vocab_size": 2},
                            np.array([[1, 7, 8, 2, 0], [1, 9, 2, 0, 0]], np.int32), None, (2, 5, H), 5),
        "region_embeddings": (UniterRegionEmbeddings, {"region_feature_dim": 12, "hidden_size": H},
                              (RNG.random((2, 3, 12), dtype=np.float32), RNG.random((2, 3, 7), dtype=np.float32),
                               RNG.standard_normal((2, 3, H)).astype(np.float32)),
                              {"masked_regions": np.array([[False, True, False], [False, False, False]])},
                              (2, 3, H), 11),
        "pooler": (UniterPooler, {"hidden_size": H}, HIDDEN, None, (2, H), 2),
        "mlm_head": (MlmHead, {"hidden_size": H, "vocab_size": 120}, (HIDDEN[:, :4], RNG.standard_normal(
                (120, H)).astype(np.float32)), None, (2, 4, 120), 5),
        "mrfr_head": (MrfrHead, {"hidden_size": H, "region_feature_dim": 12},
                      (HIDDEN[:, :4], RNG.standard_normal((12, H)).astype(np.float32)), None, (2, 4, 12), 5),
        "mrc_head": (MrcHead, {"hidden_size": H, "num_soft_labels": 5}, HIDDEN[:, :4], None, (2, 4, 5), 6),
        "itm_head": (ItmHead, {"hidden_size": H}, HIDDEN[:, 0], None, (2, 2), 2),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layers_pass_the_harness(case, tmp_path):
    layer_cls, init_kwargs, input_data, call_kwargs, shape, num_weights = LAYER_CASES[case]
    layer, _ = test_case.run_layer_test(layer_cls, init_kwargs, input_data, call_kwargs, expected_output_shape=shape,
                                        expected_num_trainable_weights=num_weights)
    test_case.run_serialization_test(layer, input_data, call_kwargs, tmp_dir=tmp_path)


@pytest.fixture(scope="module")
def encoder_outputs():
    """The tiny backbone's outputs (2 rows: one NLVR2 pair) plus region_mask, the heads' input."""
    inputs = tiny_backbone_inputs()
    outputs = {key: value.numpy() for key, value in UniterBackbone(TINY_CONFIG)(inputs).items()}
    outputs["region_mask"] = inputs["region_mask"]
    return outputs


# head class, constructor arguments, output shape for 2 rows, trainable weights (the official parameter count).
HEAD_CASES = {
        "vqa": (VqaHead, {"hidden_size": H, "num_answers": 7}, (2, 7), 6),
        "nlvr2_paired": (Nlvr2PairedHead, {"hidden_size": H}, (1, 2), 2),
        "nlvr2_triplet": (Nlvr2TripletHead, {"hidden_size": H}, (2, 2), 2),
        "nlvr2_paired_attn": (Nlvr2PairedAttentionHead, {"hidden_size": H, "num_attention_heads": A}, (1, 2), 14),
        "itm_rank": (ItmRankHead, {"hidden_size": H}, (2, 1), 4),
        "re_mlp1": (ReferringExpressionHead, {"hidden_size": H, "mlp": 1}, (2, 3), 2),
        "re_mlp2": (ReferringExpressionHead, {"hidden_size": H, "mlp": 2}, (2, 3), 6),
        "vcr": (VcrHead, {"hidden_size": H}, (2, 2), 6),
}
# Every head passes its dtype policy to its sublayers (the precision check runs for all of them).
HEADS_WITHOUT_DTYPE_PROPAGATION: set = set()


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_downstream_heads_pass_the_harness(case, encoder_outputs, tmp_path):
    head_cls, init_kwargs, shape, num_weights = HEAD_CASES[case]
    head, _ = test_case.run_layer_test(head_cls, init_kwargs, encoder_outputs, expected_output_shape=shape,
                                       expected_num_trainable_weights=num_weights,
                                       run_precision_check=case not in HEADS_WITHOUT_DTYPE_PROPAGATION)
    test_case.run_serialization_test(head, encoder_outputs, tmp_dir=tmp_path)


def test_backbone_passes_the_harness(tmp_path):
    inputs = tiny_backbone_inputs()
    backbone, _ = test_case.run_layer_test(
            UniterBackbone, {"config": TINY_CONFIG}, inputs,
            expected_output_shape={"sequence_output": (2, 8, H), "joint_mask": (2, 8), "pooled_output": (2, H),
                                   "text_lengths": (2,)},
            expected_num_trainable_weights=BACKBONE_WEIGHTS)
    test_case.run_serialization_test(backbone, inputs, tmp_dir=tmp_path / "serialization")
    test_case.run_model_saving_test(backbone, inputs, call_kwargs={"output_hidden_states": True},
                                    tmp_dir=tmp_path)


def _mlm_batch():
    batch = tiny_backbone_inputs()
    labels = np.full_like(batch["token_ids"], -1)
    labels[:, 1] = batch["token_ids"][:, 1]
    batch["token_ids"] = np.where(labels >= 0, TINY_CONFIG.mask_token_id, batch["token_ids"]).astype(np.int32)
    batch["mlm_labels"] = labels
    return batch


def test_pretraining_model_passes_the_harness(tmp_path):
    batch = _mlm_batch()
    model, outputs = test_case.run_layer_test(
            UniterPretrainingModel, {"backbone": UniterBackbone(TINY_CONFIG), "max_masked_tokens": 2}, batch,
            call_kwargs={"task": "mlm"}, expected_num_trainable_weights=BACKBONE_WEIGHTS + 5 + 5 + 6 + 2,
            run_precision_check=False)
    assert outputs["mlm_logits"].shape == (2, 2, TINY_CONFIG.vocab_size) and outputs["loss"].shape == ()
    # The heads follow the backbone's policy.
    test_case.run_precision_test(lambda dtype: UniterPretrainingModel(UniterBackbone(TINY_CONFIG, dtype=dtype)), batch,
                                 {"task": "mlm"})
    test_case.run_model_saving_test(model, batch, call_kwargs={"task": "mlm"}, tmp_dir=tmp_path)


@pytest.mark.parametrize("case", [
        "vqa",
        pytest.param("nlvr2_paired_attn", marks=pytest.mark.slow),
        pytest.param("re_mlp2", marks=pytest.mark.slow),
        pytest.param("vcr", marks=pytest.mark.slow),
        pytest.param("itm_rank", marks=pytest.mark.slow),
])
def test_task_models_pass_the_harness(case, tmp_path):
    head_cls, init_kwargs, shape, _ = HEAD_CASES[case]
    inputs = tiny_backbone_inputs()
    model = TaskModel(backbone=UniterBackbone(TINY_CONFIG), head=head_cls(**init_kwargs), task_name=case)
    test_case.run_serialization_test(model, inputs, tmp_dir=tmp_path / "serialization")
    test_case.run_model_saving_test(model, inputs, tmp_dir=tmp_path)
    assert tuple(model(inputs).shape) == shape
    if case not in HEADS_WITHOUT_DTYPE_PROPAGATION:
        test_case.run_precision_test(
                lambda dtype: TaskModel(backbone=UniterBackbone(TINY_CONFIG, dtype=dtype),
                                        head=head_cls(**init_kwargs, dtype=dtype), task_name=case, dtype=dtype),
                inputs)


def test_harness_catches_a_broken_layer():
    """The harness fails a layer whose get_config forgets an argument, a wrong weight count and shape."""

    class ScaledPooler(UniterPooler):
        def __init__(self, hidden_size, scale=1.0, **kwargs):
            super().__init__(hidden_size, **kwargs)
            self.scale = scale

        def call(self, sequence_output):
            return super().call(sequence_output) * self.scale  # get_config forgets ``scale``

    with pytest.raises(AssertionError, match="ScaledPooler from_config"):
        test_case.run_layer_test(ScaledPooler, {"hidden_size": H, "scale": 3.0}, HIDDEN, run_precision_check=False)
    with pytest.raises(AssertionError, match="2 trainable weights, expected 3"):
        test_case.run_layer_test(UniterPooler, {"hidden_size": H}, HIDDEN, expected_num_trainable_weights=3)
    with pytest.raises(AssertionError, match="output shapes"):
        test_case.run_layer_test(UniterPooler, {"hidden_size": H}, HIDDEN, expected_output_shape=(2, 5, H))
