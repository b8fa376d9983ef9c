"""``uniter sample-data``: render the deterministic sample dataset (images, captions, VQA, SNLI-VE, boxes)."""

from __future__ import annotations

NAME = "sample-data"
HELP = ("Render a small deterministic dataset of shape scenes: images/*.png, COCO captions, VQA v2 "
        "questions/annotations, SNLI-VE hypotheses (jsonl) and ground-truth boxes.")


def add_arguments(parser):
    parser.add_argument("--output", required=True, help="Output directory.")
    parser.add_argument("--num-images", type=int, default=32, help="Number of images (default 32).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed; same seed, same files.")
    parser.add_argument("--width", type=int, default=320, help="Image width in pixels.")
    parser.add_argument("--height", type=int, default=240, help="Image height in pixels.")


def run(args) -> int:
    import sys

    from uniter_tf.data import sample_data

    try:
        config = sample_data.SampleDataConfig(num_images=args.num_images, seed=args.seed,
                                              image_size=(args.width, args.height))
    except ValueError as error:
        print(f"uniter sample-data: {error}", file=sys.stderr)
        return 2
    counts = sample_data.generate(args.output, config)
    print(f"wrote {counts['images']} images, {counts['captions']} captions, {counts['questions']} questions, "
          f"{counts['hypotheses']} SNLI-VE hypotheses and {counts['boxes']} boxes to {args.output}")
    return 0
