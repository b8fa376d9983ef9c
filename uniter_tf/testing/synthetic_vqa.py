"""A small, learnable synthetic VQA set of canonical records (tests, benchmarks, smoke runs).

Each image shows one of ``num_answers`` concepts (its region features are the concept's prototype plus
noise). Each question is a template of random real-word ids; the right answer is the image's concept with
soft score 1.0, and the next concept gets 0.3 (so the soft-score path is exercised). A model can only
answer from the image, which makes the VQA score a real signal of learning.
"""

from __future__ import annotations

from typing import List

import numpy as np

from uniter_tf.data import schema
from uniter_tf.data import tfrecord_io


def write_synthetic_vqa_records(output_prefix: str, model_config, *, num_images: int = 32,
                                questions_per_image: int = 2, num_answers: int = 8, num_regions: int = 6,
                                captions_per_image: int = 0, num_shards: int = 1, seed: int = 0,
                                split_seed: int = 0) -> List[str]:
    """Writes GZIP TFRecord shards of VQA question records (and optionally plain caption records).

    Args:
        output_prefix: shard path prefix.
        model_config: a :class:`uniter_tf.config.UniterConfig` (feature dim and word-id range).
        num_images: distinct images.
        questions_per_image: question records per image.
        num_answers: answer vocabulary size = number of concepts.
        num_regions: regions per image.
        captions_per_image: caption records (no answers) per image, for ITM / retrieval evaluation.
        num_shards: files.
        seed: seed of the concepts (prototypes, words); use the same one for train and eval.
        split_seed: seed of the per-image noise and questions; use different ones for train and eval.

    Returns:
        The shard paths.
    """
    if num_answers < 2:
        raise ValueError(f"num_answers must be >= 2, got {num_answers}")
    rng = np.random.default_rng(seed)
    feature_dim = model_config.region_feature_dim
    low = model_config.first_word_id
    high = min(model_config.vocab_size, low + 2000)
    prototypes = rng.normal(0.0, 1.0, size=(num_answers, feature_dim)).astype(np.float32)
    concept_words = rng.choice(np.arange(low, high), size=num_answers, replace=False)
    rng = np.random.default_rng([seed, split_seed])
    with tfrecord_io.ShardedTFRecordWriter(output_prefix, num_shards=num_shards) as writer:
        for image_index in range(num_images):
            concept = image_index % num_answers
            features = prototypes[concept] + rng.normal(0.0, 0.3, size=(num_regions, feature_dim))
            corners = rng.uniform(0, 60, size=(num_regions, 2))
            sizes = rng.uniform(10, 40, size=(num_regions, 2))
            boxes = np.concatenate([corners, corners + sizes], axis=1)
            image = dict(image_id=f"img_{image_index:04d}", region_features=features.astype(np.float32),
                         region_boxes=boxes.astype(np.float32), image_height=100, image_width=100)
            for question_index in range(questions_per_image):
                token_ids = rng.integers(low, high, size=int(rng.integers(3, 8)))
                writer.write(schema.make_example(
                        **image, example_id=f"vqa_{image_index:04d}_{question_index}",
                        text=f"question {question_index} about image {image_index}", token_ids=token_ids,
                        answers=[f"answer_{concept}"],
                        answer_labels=[concept, (concept + 1) % num_answers], answer_scores=[1.0, 0.3],
                        task=schema.TASK_VQA))
            for caption_index in range(captions_per_image):
                token_ids = np.concatenate([[concept_words[concept]], rng.integers(low, high, size=4)])
                writer.write(schema.make_example(
                        **image, example_id=f"cap_{image_index:04d}_{caption_index}",
                        text=f"caption {caption_index} of image {image_index}", token_ids=token_ids,
                        task=schema.TASK_CAPTION))
    return writer.paths


def main(argv=None) -> int:
    """``python -m uniter_tf.testing.synthetic_vqa OUTPUT_DIR``: train/eval shards and ``ans2label.json``."""
    import argparse
    import json
    import os

    from uniter_tf.config import UniterConfig

    parser = argparse.ArgumentParser(description="Write the synthetic VQA set (train-*, eval-*, ans2label.json).")
    parser.add_argument("output_dir")
    parser.add_argument("--model", default="tiny", help="UniterConfig preset or JSON (feature dim, word ids).")
    parser.add_argument("--num-answers", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=16)
    args = parser.parse_args(argv)
    model_config = UniterConfig.resolve(args.model)
    os.makedirs(args.output_dir, exist_ok=True)
    train = write_synthetic_vqa_records(os.path.join(args.output_dir, "train"), model_config,
                                        num_images=args.train_images, num_answers=args.num_answers)
    evaluation = write_synthetic_vqa_records(os.path.join(args.output_dir, "eval"), model_config,
                                             num_images=args.eval_images, num_answers=args.num_answers,
                                             split_seed=1, captions_per_image=1)
    with open(os.path.join(args.output_dir, "ans2label.json"), "w", encoding="utf-8") as handle:
        json.dump({f"answer_{index}": index for index in range(args.num_answers)}, handle, indent=1)
    print(f"wrote {train + evaluation} and ans2label.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
