"""``uniter query``: ask a served UNITER model (TF Serving or ``uniter serve``) about an image and texts."""

from __future__ import annotations

NAME = "query"
HELP = "Score caption-image pairs, answer questions or embed pairs against a served model over gRPC."


def add_arguments(parser):
    parser.add_argument("--target", default="127.0.0.1:8500", help="gRPC host:port (default 127.0.0.1:8500).")
    parser.add_argument("--model-name", default="uniter", help="Served model name (default uniter).")
    parser.add_argument("--version", type=int, default=None, help="A fixed version (default: the newest).")
    # One image source is required, except for --task retrieval (the gallery is the served version's index).
    source = parser.add_mutually_exclusive_group(required=False)
    source.add_argument("--image", help="An image file; regions are extracted locally with --detector.")
    source.add_argument("--regions",
                        help="An .npz with region_features [n, D] and region_boxes [n, 4] plus image_size [2] "
                             "(height, width), or region_positions [n, 7].")
    source.add_argument("--examples", help="A TFRecord file (GZIP or not) of canonical records (serve_examples).")
    parser.add_argument("--text", action="append", default=[],
                        help="A caption or question (repeat for several); not used with --examples.")
    parser.add_argument("--mode", choices=("score", "answer", "embed"), default="score",
                        help="score: ITM probability; answer: VQA top-k (fine-tuned VQA exports); "
                             "embed: pooled embeddings.")
    parser.add_argument("--image-2", default=None,
                        help="--task nlvr2: the right image's file (with --image, the left one).")
    parser.add_argument("--regions-2", default=None,
                        help="--task nlvr2: the right image's .npz (with --regions, the left one; same arrays).")
    parser.add_argument("--answer", action="append", default=[],
                        help="--task vcr: an answer choice (repeat: as many as the model's choices, 4).")
    parser.add_argument("--rationale", action="append", default=[],
                        help="--task vcr: a rationale choice (repeat, 4); with them the answer is also justified.")
    parser.add_argument("--k", type=int, default=10, help="--task retrieval: images to answer (default 10).")
    parser.add_argument("--rerank", type=int, default=0,
                        help="--task retrieval: first-stage candidates the cross-encoder rescores (0: none; else "
                             ">= --k).")
    parser.add_argument("--task", choices=("ve", "refcoco", "nlvr2", "vcr", "retrieval"), default=None,
                        help="ve: each --text is an SNLI-VE hypothesis about the image; prints the probability "
                             "of entailment, neutral and contradiction (exports of `uniter finetune --task ve`). "
                             "refcoco: each --text is a referring expression; prints every region's score, the "
                             "chosen region and its box in pixels (needs pixel boxes: --image or --regions with "
                             "region_boxes and image_size). nlvr2: each --text is a statement about two images, "
                             "--image/--image-2 or --regions/--regions-2 (left, right); prints label (True/False), "
                             "p_true and the logits (exports of an nlvr2 run). vcr: one --text is the question, "
                             "--answer (and --rationale) the choices, [i] in them = region i; prints every "
                             "choice's score and the chosen answer (and rationale) (exports of a vcr run). "
                             "retrieval: one --text is a query against the served version's image index (exports "
                             "with --index); prints the --k best image ids, reranked over --rerank candidates.")
    parser.add_argument("--detector", default=None,
                        help="Detector for --image: a frozen .pb or SavedModel dir (default SSD-MobileNet-v2).")
    parser.add_argument("--timeout", type=float, default=60.0, help="Deadline per call in seconds (default 60).")
    parser.add_argument("--max-message-bytes", type=int, default=256 * 1024 * 1024,
                        help="gRPC message limit of the client (default 256 MiB).")


def _read_examples(path: str):
    import tensorflow as tf

    compression = "GZIP" if path.endswith(".gz") else ""
    try:
        return [record.numpy() for record in tf.data.TFRecordDataset(path, compression_type=compression)]
    except tf.errors.DataLossError:
        other = "" if compression else "GZIP"
        return [record.numpy() for record in tf.data.TFRecordDataset(path, compression_type=other)]


def _read_regions(path: str):
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    if "region_features" not in arrays:
        raise ValueError(f"{path} has no 'region_features' array (it has {sorted(arrays)})")
    if "region_positions" in arrays:
        return {"region_features": arrays["region_features"], "region_positions": arrays["region_positions"]}
    missing = [name for name in ("region_boxes", "image_size") if name not in arrays]
    if missing:
        raise ValueError(f"{path} needs region_positions, or region_boxes with image_size; missing {missing}")
    return {"region_features": arrays["region_features"], "region_boxes": arrays["region_boxes"],
            "image_size": arrays["image_size"]}


def run(args) -> int:
    import json
    import sys

    from serving.client import ServingRequestError, UniterClient
    from uniter_tf.console import UserError

    if args.task == "retrieval":
        if args.image or args.regions or args.examples or len(args.text) != 1:
            raise UserError("--task retrieval takes exactly one --text and no --image / --regions / --examples "
                            "(the gallery is the served version's index)")
    elif not (args.image or args.regions or args.examples):
        raise UserError("one of the arguments --image --regions --examples is required")
    client = UniterClient(args.target, model_name=args.model_name, version=args.version, timeout_s=args.timeout,
                          max_message_bytes=args.max_message_bytes)
    try:
        if args.task == "retrieval":
            result = client.retrieve(args.text[0], k=args.k, rerank=args.rerank)
        elif args.examples:
            outputs = client.score_examples(_read_examples(args.examples))
            if "itm_score" in outputs:
                result = [{"example_id": example_id.decode("utf-8"), "itm_score": float(score)}
                          for example_id, score in zip(outputs["example_id"], outputs["itm_score"])]
            else:  # a two-image (NLVR2) export: no ITM score, the pair's answer
                result = [{"example_id": example_id.decode("utf-8"), "label": label.decode("utf-8"),
                           "p_true": float(p_true)}
                          for example_id, label, p_true in zip(outputs["example_id"], outputs["label"],
                                                               outputs["p_true"])]
            if "labels" in outputs:  # a VE export: every label with its probability
                for row, labels, scores in zip(result, outputs["labels"], outputs["label_scores"]):
                    row["probabilities"] = {label.decode("utf-8"): float(score) for label, score in zip(labels, scores)}
            if "answers" in outputs:
                for row, answers, scores in zip(result, outputs["answers"], outputs["answer_scores"]):
                    row["answers"] = [[answer.decode("utf-8"), float(score)] for answer, score in zip(answers, scores)]
        else:
            if not args.text:
                raise UserError("give at least one --text (or --examples with records)")
            second = args.image_2 if args.image else args.regions_2
            if args.task == "nlvr2" and not second:
                raise UserError("--task nlvr2 needs the right image too: --image-2 with --image, or --regions-2 "
                                "with --regions")
            if args.task != "nlvr2" and (args.image_2 or args.regions_2):
                raise UserError("--image-2 / --regions-2 are for --task nlvr2 (a statement about two images)")
            if args.image:
                extractor = None
                if args.detector:
                    from uniter_tf.extraction.detector import load_detector
                    from uniter_tf.extraction.region_extractor import RegionFeatureExtractor

                    extractor = RegionFeatureExtractor(load_detector(args.detector))

                def image_regions(path):
                    regions = client.extract_regions(path, extractor)
                    return {"region_features": regions.region_features, "region_boxes": regions.region_boxes,
                            "image_size": (regions.image_height, regions.image_width)}

                read = image_regions
                region_inputs = image_regions(args.image)
            else:
                read = _read_regions
                region_inputs = _read_regions(args.regions)
            if args.task != "vcr" and (args.answer or args.rationale):
                raise UserError("--answer / --rationale are for --task vcr (a question with answer choices)")
            if args.task == "vcr":
                if len(args.text) != 1 or not args.answer:
                    raise UserError("--task vcr takes one --text (the question) and its --answer choices")
                if region_inputs.get("region_boxes") is None:
                    raise UserError("--task vcr needs pixel boxes: --image, or --regions with region_boxes and "
                                    "image_size (references [i] name these regions)")
                result = client.vcr(args.text[0], args.answer, region_inputs["region_features"],
                                    region_inputs["region_boxes"], region_inputs["image_size"],
                                    rationales=args.rationale or None)
            elif args.task == "nlvr2":
                result = client.nlvr2(args.text, region_inputs, read(second))
            elif args.task == "ve":
                rows = client.entail(args.text, **region_inputs)
                result = [{"hypothesis": text, "label": max(row, key=row.get), "probabilities": row}
                          for text, row in zip(args.text, rows)]
            elif args.task == "refcoco":
                if region_inputs.get("region_boxes") is None:
                    raise UserError("--task refcoco answers with a box in pixels: the regions need region_boxes "
                                    "and image_size (not only region_positions)")
                result = client.refer(args.text, region_inputs["region_features"], region_inputs["region_boxes"],
                                      region_inputs["image_size"])
            elif args.mode == "score":
                scores = client.score(args.text, **region_inputs)
                result = [{"text": text, "itm_score": float(score)} for text, score in zip(args.text, scores)]
            elif args.mode == "answer":
                answers = client.answer(args.text, **region_inputs)
                result = [{"question": text, "answers": [[answer, score] for answer, score in rows]}
                          for text, rows in zip(args.text, answers)]
            else:
                embeddings = client.embed(args.text, **region_inputs)
                result = [{"text": text, "pooled_output": embedding.tolist()}
                          for text, embedding in zip(args.text, embeddings)]
    except ServingRequestError as error:
        if error.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and client.last_version is None:
            # Nothing answered: the user starts the server or fixes --target.
            raise UserError(f"no server answered at --target {args.target} ({error.code}; is `uniter serve` "
                            f"running there?)") from None
        print(f"uniter query: error: the server answered {error.code}: {' '.join(error.message.split())}",
              file=sys.stderr)
        return 1
    finally:
        client.close()
    print(json.dumps({"model": args.model_name, "version": client.last_version, "results": result}, indent=2))
    return 0
