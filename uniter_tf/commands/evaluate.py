"""``uniter evaluate``: ITM accuracy, retrieval recall@1/5/10 and the VQA score of an exported model; the
SNLI-VE and RefCOCO accuracy and the NLVR2 accuracy and consistency of a fine-tuning run (``--task
ve|refcoco|nlvr2``)."""

from __future__ import annotations

NAME = "evaluate"
#: Tasks evaluated on a fine-tuning run directory (the task's own metrics, in-process).
RUN_TASKS = ("ve", "refcoco", "nlvr2")
HELP = ("Evaluate an exported model (SavedModel, TFX Model artifact, serving base path or fine-tuning run) "
        "on TFRecord files: ITM accuracy, retrieval R@1/5/10, VQA score; prints the metrics as JSON.")


def add_arguments(parser):
    parser.add_argument("--run", required=True,
                        help="A SavedModel directory, a TFX Model artifact (with Format-Serving/), a serving base "
                             "path with numbered versions (the newest is used) or a fine-tuning run (its "
                             "export/<version>/).")
    parser.add_argument("--files", required=True, nargs="+",
                        help="Glob(s) of the eval split's canonical TFRecords (GZIP when the name ends in .gz).")
    parser.add_argument("--train-files", nargs="+", default=None,
                        help="Glob(s) of the training records: their VQA questions give the question-only "
                             "baseline (vqa_baseline_score).")
    parser.add_argument("--batch-size", type=int, default=32, help="Records per model call (default 32).")
    parser.add_argument("--max-gallery-texts", type=int, default=1000,
                        help="The first this-many captions are the retrieval queries, their images the gallery "
                             "(default 1000).")
    parser.add_argument("--output", default=None, help="Also write the metrics to this JSON file.")
    parser.add_argument("--task", default=None, choices=("retrieval",) + RUN_TASKS,
                        help="retrieval: every caption of --files against every image of them (no "
                             "--max-gallery-texts cut), txt/img R@1/5/10 and r_mean; with --output the float16 "
                             "score matrix goes beside it (OUTPUT_STEM_scores.npy, OUTPUT_STEM_ids.json). "
                             "ve / refcoco: --run is a fine-tuning run directory of that task, rebuilt from its "
                             "latest checkpoint; prints loss, accuracy and num_examples (RefCOCO: IoU > 0.5 with "
                             "the official inclusive IoU; evaluate ground-truth-box and detected-box records "
                             "separately); with --output the predictions go beside it (OUTPUT_STEM_predictions.json: "
                             "VE {example_id: label}, RefCOCO the list of {sent_id, pred_box, tgt_box}). "
                             "nlvr2: the run's pair records; loss, accuracy, consistency (official eval_nlvr2.py) and "
                             "num_examples; with --output the official predictions CSV goes beside it "
                             "(OUTPUT_STEM_predictions.csv, identifier,True|False).")


def run(args) -> int:
    from uniter_tf import evaluation

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_gallery_texts < 1:
        raise ValueError(f"--max-gallery-texts must be >= 1, got {args.max_gallery_texts}")
    if getattr(args, "task", None) == "retrieval":
        import os

        from uniter_tf.retrieval import gallery

        prefix = os.path.splitext(args.output)[0] if args.output else None
        metrics = gallery.evaluate_saved_model(args.run, args.files, batch_size=args.batch_size, output_prefix=prefix)
        return _print_metrics(metrics, args.output)
    if getattr(args, "task", None) in RUN_TASKS:
        return _print_metrics(evaluate_task_run(args.run, args.task, args.files, args.batch_size, args.output),
                              args.output)
    _refuse_two_image_export(args.run)
    # A missing model, unmatched files or a malformed record raise ValueError: one line, exit 2.
    metrics = evaluation.evaluate_files(args.run, args.files, batch_size=args.batch_size,
                                        max_gallery_texts=args.max_gallery_texts, train_files=args.train_files)
    return _print_metrics(metrics, args.output)


def _refuse_two_image_export(run: str) -> None:
    """A two-image export (NLVR2) has no one-image signatures to score captions or questions with: say so
    and name the command that evaluates it, instead of reporting an eval split without usable records."""
    from uniter_tf.evaluation import resolve_saved_model
    from uniter_tf.export.exporter import read_metadata

    try:
        task = read_metadata(resolve_saved_model(run)).get("task") or {}
    except Exception:  # no model or no metadata: evaluate_files reports it  # pylint: disable=broad-except
        return
    if task.get("image_pair"):
        raise ValueError(f"{run!r} is a two-image export (task {task.get('name')!r}): its signatures take a statement "
                         f"and two images, which the ITM / retrieval / VQA evaluation does not give; evaluate the "
                         f"fine-tuning run it came from with --task {task.get('name')}")


def evaluate_task_run(run_dir: str, task_name: str, files, batch_size: int, output=None) -> dict:
    """The task's metrics of a fine-tuning run's latest checkpoint on ``files``.

    Args:
        run_dir: the run directory (``finetune_config.json``, ``checkpoints/``).
        task_name: the task the run must have been trained for (``ve`` or ``refcoco``).
        files: globs of canonical records.
        batch_size: records per batch.
        output: the metrics file; the predictions go to ``OUTPUT_STEM_predictions.json``.

    Raises:
        ValueError: the directory is not a run of ``task_name`` or the files hold none of its records.
    """
    import os

    from uniter_tf import runs
    from uniter_tf.data.finetune_inputs import build_finetune_dataset
    from uniter_tf.models.task import evaluate_task_model
    from uniter_tf.models.task_model import TaskModel

    if not runs.is_task_run(run_dir):
        raise ValueError(f"--task {task_name} evaluates a fine-tuning run directory; {run_dir!r} has no "
                         f"{runs.TASK_RUN_CONFIG_FILE}")
    run = runs.load_task_run(run_dir)
    if run.task.name != task_name:
        raise ValueError(f"{run_dir!r} is a run of task {run.task.name!r}, not {task_name!r}")
    max_text_length = run.max_text_length or 60
    task = run.task.configure(model=run.model_config, eval_files=list(files), eval_batch_size=batch_size,
                              max_text_length=max_text_length)
    model = TaskModel(backbone=run.backbone, head=run.head, task_name=task.name, name=f"uniter_{task.name}")
    dataset = build_finetune_dataset(list(files), task, run.model_config, batch_size,
                                     max_text_length=max_text_length, training=False)
    predictions_path = f"{os.path.splitext(output)[0]}_predictions.json" if output else None
    if task_name == "nlvr2":
        from uniter_tf.models.nlvr2_task import Nlvr2TaskModel

        # The pair model over the restored backbone and head (the variant's layout of the two images).
        pair_model = Nlvr2TaskModel(backbone=run.backbone, head=run.head, variant=task.variant, task_name=task.name,
                                    name=f"uniter_{task.name}")
        path = f"{os.path.splitext(output)[0]}_predictions.csv" if output else None
        metrics = task.evaluate(pair_model, files=list(files), predictions_path=path)
        if path:
            metrics["predictions"] = path
        return {"task": task_name, "checkpoint": run.checkpoint, **metrics}
    if task_name == "refcoco":
        from uniter_tf.models.refcoco_task import evaluate_referring_expressions

        metrics = evaluate_referring_expressions(task, model, dataset, predictions_path=predictions_path, files=files)
    else:
        metrics = evaluate_task_model(task, model, dataset, predictions_path=predictions_path, files=files)
    return {"task": task_name, "checkpoint": run.checkpoint, **metrics}


def _print_metrics(metrics, output) -> int:
    import json

    text = json.dumps(metrics, indent=2, sort_keys=True)
    if output:
        import tensorflow as tf

        with tf.io.gfile.GFile(output, "w") as handle:
            handle.write(text + "\n")
    print(text)
    return 0
