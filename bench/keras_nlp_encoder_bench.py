"""keras-nlp's TransformerEncoder against UNITER's own transformer layer: parity and speed, one process.

Issue 10 item 8 asks whether ``keras_nlp.layers.TransformerEncoder`` can replace
:class:`uniter_tf.layers.transformer.UniterTransformerLayer` (adopt it only if the parity stays within 1e-5 of
the official outputs and the speed holds). This script:

1. builds both layers with the same shape (post-LN, exact GELU, epsilon 1e-12), copies our weights into
   keras-nlp's (Q/K/V/O kernels reshaped to ``EinsumDense``'s ``[H, A, d]`` / ``[A, d, H]``) and reports the
   max abs difference of the outputs on the valid positions of a padded batch;
2. swaps every encoder layer of the official parity fixture's model (tests/fixtures/parity_official) for a
   keras-nlp encoder with the same weights and reports the max abs error of each official output, next to
   ours (the parity requirement is 1e-5);
3. times the forward pass and a forward + backward pass of one layer (``tf.function``, optionally XLA) for
   both, interleaved round by round so machine load hits both alike, and prints the medians.

Usage::

    python bench/keras_nlp_encoder_bench.py --preset uniter-base --batch 8 --length 96 --rounds 7
    python bench/keras_nlp_encoder_bench.py --json results.json  # machine-readable too
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402  pylint: disable=wrong-import-position
import keras_nlp  # noqa: E402  pylint: disable=wrong-import-position

from uniter_tf.config import UniterConfig  # noqa: E402  pylint: disable=wrong-import-position
from uniter_tf.layers.attention import additive_attention_bias  # noqa: E402  pylint: disable=wrong-import-position
from uniter_tf.layers.transformer import UniterTransformerLayer  # noqa: E402  pylint: disable=wrong-import-position

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "parity_official")


def cpu_model() -> str:
    """The ``Model name`` line of lscpu (the platform's processor string when lscpu is missing)."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def keras_nlp_encoder(config: UniterConfig) -> keras.layers.Layer:
    """A keras-nlp encoder of UNITER's layer shape, built."""
    encoder = keras_nlp.layers.TransformerEncoder(
            intermediate_dim=config.intermediate_size, num_heads=config.num_attention_heads,
            dropout=config.hidden_dropout_prob, activation="gelu", layer_norm_epsilon=config.layer_norm_epsilon,
            normalize_first=False)
    encoder.build((None, None, config.hidden_size))
    return encoder


def copy_weights(ours: UniterTransformerLayer, theirs: keras.layers.Layer) -> None:
    """Copies our layer's weights into keras-nlp's encoder (same function, other variable layout)."""
    heads, width = ours.num_attention_heads, ours.hidden_size
    head_size = width // heads
    attention = theirs._self_attention_layer  # pylint: disable=protected-access
    for source, target in ((ours.attention.query, attention._query_dense),  # pylint: disable=protected-access
                           (ours.attention.key, attention._key_dense),  # pylint: disable=protected-access
                           (ours.attention.value, attention._value_dense)):  # pylint: disable=protected-access
        target.kernel.assign(tf.reshape(source.kernel, [width, heads, head_size]))
        target.bias.assign(tf.reshape(source.bias, [heads, head_size]))
    output = attention._output_dense  # pylint: disable=protected-access
    output.kernel.assign(tf.reshape(ours.attention_output.kernel, [heads, head_size, width]))
    output.bias.assign(ours.attention_output.bias)
    pairs = ((ours.attention_layer_norm, theirs._self_attention_layer_norm),  # pylint: disable=protected-access
             (ours.output_layer_norm, theirs._feedforward_layer_norm),  # pylint: disable=protected-access
             (ours.intermediate, theirs._feedforward_intermediate_dense),  # pylint: disable=protected-access
             (ours.output_dense, theirs._feedforward_output_dense))  # pylint: disable=protected-access
    for source, target in pairs:
        for source_variable, target_variable in zip(source.weights, target.weights):
            target_variable.assign(source_variable)


def padded_batch(config: UniterConfig, batch: int, length: int, seed: int = 0):
    """Random hidden states ``[B, L, H]`` and a key mask with a different valid length per row."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((batch, length, config.hidden_size)).astype(np.float32)
    lengths = np.linspace(length, max(2, length // 3), batch).astype(int)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return tf.constant(hidden), tf.constant(mask)


def layer_parity(config: UniterConfig, batch: int, length: int) -> float:
    """Max abs difference of the two layers' outputs on the valid positions (eval mode)."""
    ours = UniterTransformerLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                                  layer_norm_epsilon=config.layer_norm_epsilon)
    ours.build()
    # Non-trivial weights: random biases and LayerNorm gains, so no term is zero by construction.
    rng = np.random.default_rng(1)
    for variable in ours.weights:
        variable.assign(variable + rng.normal(0.0, 0.05, variable.shape).astype(np.float32))
    theirs = keras_nlp_encoder(config)
    copy_weights(ours, theirs)
    hidden, mask = padded_batch(config, batch, length)
    expected, _ = ours(hidden, additive_attention_bias(mask, tf.float32), training=False)
    actual = theirs(hidden, padding_mask=tf.cast(mask, tf.bool), training=False)
    valid = mask.numpy().astype(bool)
    return float(np.max(np.abs(actual.numpy()[valid] - expected.numpy()[valid])))


class _KerasNlpLayer(keras.layers.Layer):
    """keras-nlp's encoder behind our layer's call signature (``(hidden, bias) -> (hidden, no probs)``)."""

    def __init__(self, encoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def call(self, hidden_states, attention_bias, training=None):
        # The bias is (1 - m) * -10000 on masked keys: recover the key mask from it.
        key_mask = tf.equal(attention_bias[:, 0, 0, :], 0.0)
        probabilities = tf.zeros([0])  # keras-nlp's encoder does not return attention probabilities
        return self.encoder(hidden_states, padding_mask=key_mask, training=training), probabilities


def fixture_parity() -> Dict[str, Dict[str, float]]:
    """Max abs error vs the official fixture of each output, ours and with keras-nlp layers swapped in."""
    from uniter_tf.checkpoints import parity  # pylint: disable=import-outside-toplevel

    fixture = parity.load_fixture(FIXTURE_DIR)
    model = parity.build_fixture_model(fixture.config, fixture.state_dict)
    ours = {row.name: row.max_abs_error for row in
            parity.compare_outputs(parity.model_outputs(model, fixture.inputs), fixture.outputs, fixture.inputs, 1e-5)}
    backbone = model.backbone
    swapped = []
    for layer in backbone.encoder_layers:
        encoder = keras_nlp_encoder(fixture.config)
        copy_weights(layer, encoder)
        swapped.append(_KerasNlpLayer(encoder))
    original = backbone.encoder_layers
    object.__setattr__(backbone, "encoder_layers", swapped)  # this run only; the model is discarded after
    try:
        outputs = parity.model_outputs(model, fixture.inputs)
    finally:
        object.__setattr__(backbone, "encoder_layers", original)
    theirs = {row.name: row.max_abs_error for row in
              parity.compare_outputs(outputs, fixture.outputs, fixture.inputs, 1e-5)}
    rows = {name: {"ours": ours[name], "keras_nlp": theirs.get(name, float("nan"))} for name in sorted(ours)}
    # The errors vs the official outputs can peak at the same element for both; this says they differ.
    ours_sequence = parity.model_outputs(model, fixture.inputs)["sequence_output"]
    rows["sequence_output keras_nlp - ours"] = {
            "ours": 0.0, "keras_nlp": float(np.max(np.abs(outputs["sequence_output"] - ours_sequence)))}
    return rows


def timings(config: UniterConfig, batch: int, length: int, rounds: int, steps: int, jit: bool) -> Dict[str, float]:
    """Median ms per forward and per forward + backward of one layer, both layers interleaved."""
    ours = UniterTransformerLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                                  layer_norm_epsilon=config.layer_norm_epsilon)
    ours.build()
    theirs = keras_nlp_encoder(config)
    copy_weights(ours, theirs)
    hidden, mask = padded_batch(config, batch, length)
    bias = additive_attention_bias(mask, tf.float32)
    padding = tf.cast(mask, tf.bool)

    def forward_ours(training):
        return ours(hidden, bias, training=training)[0]

    def forward_theirs(training):
        return theirs(hidden, padding_mask=padding, training=training)

    functions = {}
    for name, forward, layer in (("ours", forward_ours, ours), ("keras_nlp", forward_theirs, theirs)):
        def infer(forward=forward):
            return forward(False)

        def train(forward=forward, layer=layer):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(forward(True)))
            return tape.gradient(loss, layer.trainable_variables)

        functions[name] = {"forward": tf.function(infer, jit_compile=jit),
                           "forward_backward": tf.function(train, jit_compile=jit)}
    samples: Dict[str, List[float]] = {f"{name}_{kind}": [] for name in functions for kind in functions[name]}
    for name in functions:  # compile / warm up
        for function in functions[name].values():
            tf.nest.map_structure(lambda tensor: tensor.numpy(), function())
    for _ in range(rounds):
        for name in functions:
            for kind, function in functions[name].items():
                start = time.perf_counter()
                for _ in range(steps):
                    result = function()
                tf.nest.map_structure(lambda tensor: tensor.numpy(), result)
                samples[f"{name}_{kind}"].append((time.perf_counter() - start) / steps * 1000.0)
    return {key: float(np.median(values)) for key, values in samples.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="uniter-base", help="UniterConfig preset of the layer shape")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=96, help="joint length (text + regions)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="calls per timed sample")
    parser.add_argument("--jit", action="store_true", help="also time with jit_compile=True")
    parser.add_argument("--skip-fixture", action="store_true", help="skip the official-fixture parity")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    config = UniterConfig.from_preset(args.preset)
    results = {"cpu": cpu_model(), "cores": os.cpu_count(), "tensorflow": tf.__version__,
               "keras": keras.__version__, "keras_nlp": keras_nlp.__version__, "preset": args.preset,
               "batch": args.batch, "length": args.length}
    results["layer_max_abs_diff"] = layer_parity(config, args.batch, args.length)
    print(f"CPU: {results['cpu']} ({results['cores']} cores); TF {tf.__version__}, Keras {keras.__version__}, "
          f"keras-nlp {keras_nlp.__version__}")
    print(f"one {args.preset} layer, same weights, B={args.batch} L={args.length}: max |keras_nlp - ours| on valid "
          f"positions = {results['layer_max_abs_diff']:.3g}")
    if not args.skip_fixture:
        results["fixture"] = fixture_parity()
        print("official parity fixture (max abs error vs the official outputs; requirement 1e-5):")
        for name, errors in results["fixture"].items():
            print(f"  {name:34s} ours {errors['ours']:.3g}   keras_nlp {errors['keras_nlp']:.3g}")
    for jit in (False, True) if args.jit else (False,):
        key = "timings_xla" if jit else "timings"
        results[key] = timings(config, args.batch, args.length, args.rounds, args.steps, jit)
        label = "XLA" if jit else "tf.function"
        print(f"median ms per call ({label}, {args.rounds} rounds x {args.steps} calls, interleaved):")
        for kind in ("forward", "forward_backward"):
            ours, theirs = results[key][f"ours_{kind}"], results[key][f"keras_nlp_{kind}"]
            print(f"  {kind:17s} ours {ours:8.1f}   keras_nlp {theirs:8.1f}   keras_nlp/ours {theirs / ours:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
