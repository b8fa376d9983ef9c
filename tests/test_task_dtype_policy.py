"""``dtype=`` given to a task's model reaches every sublayer; the global Keras policy is never changed (issue 10).

A mixed-precision run passes its policy as ``dtype`` (the Trainer never calls ``set_dtype_policy``), so a
layer built without it would silently run in float32 (or, were the global policy flipped instead, every
later model of the process would be mixed).
"""

import keras
import pytest

from uniter_tf import tasks

POLICY = "mixed_bfloat16"


def _layers(model):
    layers = list(model._flatten_layers(include_self=True))  # pylint: disable=protected-access
    riding_along = getattr(model, "_uniter_pretraining_model", None)  # the ITM head of a downstream model
    if riding_along is not None:
        layers += list(riding_along._flatten_layers(include_self=True))  # pylint: disable=protected-access
    return layers


@pytest.mark.parametrize("name, params", [("pretraining", {}), ("vqa", {"num_answers": 4}), ("ve", {}),
                                          ("nlvr2", {"variant": "paired"}), ("nlvr2", {"variant": "paired_attn"})])
def test_every_sublayer_of_a_task_model_has_the_given_policy(name, params):
    assert keras.config.dtype_policy().name == "float32"
    task = tasks.get_task(name, model="tiny", **params)
    model = task.build_model(task.model_config(), dtype=POLICY)
    layers = _layers(model)
    wrong = sorted({f"{layer.__class__.__name__} {layer.name}: {layer.dtype_policy.name}" for layer in layers
                    if layer.dtype_policy.name != POLICY})
    assert not wrong, f"{name}: layers without the {POLICY} policy: {wrong}"
    assert len(layers) > 20  # the backbone's sublayers are among them
    # Mixed precision keeps float32 weights; the global policy is untouched.
    assert {variable.dtype for variable in model.weights} == {"float32"}
    assert keras.config.dtype_policy().name == "float32"


def test_a_head_on_a_given_backbone_follows_the_backbone_s_policy():
    from uniter_tf.models.backbone import UniterBackbone

    task = tasks.get_task("vqa", model="tiny", num_answers=4)
    config = task.model_config()
    model = task.build_model(UniterBackbone(config, dtype=POLICY), config.hidden_size)
    assert {layer.dtype_policy.name for layer in model.head._flatten_layers(include_self=True)} == {POLICY}
    assert model.dtype_policy.name == POLICY
    assert keras.config.dtype_policy().name == "float32"
