"""Image-text retrieval as a task (``uniter train`` task ``retrieval``): the official method (spec §5.4).

Model: ``rank_output = Linear(H, 1)`` on the pooled output (:class:`~uniter_tf.models.itm_rank.ItmRankHead`),
initialised from the "match" row of the pretrained ITM head when the run starts from a pretraining
checkpoint (``init`` ``pretrained`` or ``official``; the official ``init_output()``).

Two training modes (``mode``):

* ``standard`` (``train_itm.py``): a batch holds ``train_batch_size`` captions; each gives its positive
  pair, ``negative_size`` pairs with other images and ``negative_size`` pairs of other captions with its
  image; loss :func:`~uniter_tf.models.itm_rank.itm_rank_hinge_loss` (hinge on sigmoid scores, margin 0.2,
  mean over all terms).
* ``hard_negative`` (``train_itm_hard_negatives.py``): a micro-batch holds ``train_batch_size`` text queries
  (a caption, its image and ``negative_size`` other images) and as many image queries (an image, one of its
  captions and ``negative_size`` captions of other images). Every query's ``1 + negative_size`` pairs are
  scored in eval mode (no dropout) without gradient, its ``hard_negative_size`` highest-scoring negatives
  (raw logits) are kept behind the positive, and the hinge loss is computed on that hard batch in train
  mode. Loss = mean over the text queries' terms + mean over the image queries' terms: the official
  per-query ``loss.mean() / train_batch_size`` summed over ``train_batch_size`` accumulation steps, for a
  micro-batch of ``train_batch_size`` queries (set the Trainer's ``gradient_accumulation_steps`` to 1).

Evaluation (:meth:`RetrievalTask.evaluate`) scores every caption of the eval split against every image of
it (:mod:`uniter_tf.retrieval.gallery`) and reports ``txt_r1/5/10``, ``img_r1/5/10``, their means and
``r_mean``; with an output directory the ``[n_text, n_image]`` float16 score matrix is written beside the
metrics.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import keras
import tensorflow as tf

from uniter_tf.models.itm_rank import OFFICIAL_MARGIN, ItmRankHead
from uniter_tf.models.task import DownstreamTask, ExportOutputs, register_task

#: The task's registry / CLI name.
RETRIEVAL_TASK_NAME = "retrieval"
MODES = ("standard", "hard_negative")
_OWN_PARAMS = ("mode", "negative_size", "hard_negative_size", "margin", "max_eval_texts",
               "head_learning_rate_multiplier")
#: Stream names of the hard-negative mode's two query kinds (inside one micro-batch).
TEXT_QUERIES = "text_queries"
IMAGE_QUERIES = "image_queries"


def hinge_terms(rank_logits: tf.Tensor, sample_size: int, margin: float) -> tf.Tensor:
    """``[n, sample_size - 1]`` hinge terms ``max(0, margin + σ(s_neg) − σ(s_pos))`` (the positive first)."""
    scores = tf.reshape(tf.sigmoid(tf.cast(rank_logits, tf.float32)), [-1, int(sample_size)])
    return tf.maximum(margin + scores[:, 1:] - scores[:, :1], 0.0)


def positive_ranked_first(rank_logits: tf.Tensor, sample_size: int) -> tf.Tensor:
    """``[n]`` float32: 1 where the positive scores strictly above every negative of its group."""
    logits = tf.reshape(tf.cast(rank_logits, tf.float32), [-1, int(sample_size)])
    return tf.cast(logits[:, 0] > tf.reduce_max(logits[:, 1:], axis=1), tf.float32)


def select_hard_negatives(scores: tf.Tensor, hard_negative_size: int) -> tf.Tensor:
    """``[B, 1 + k]`` positions in each group: the positive (0), then its ``k`` highest-scoring negatives.

    Args:
        scores: ``[B, S]`` logits of each group's pairs, the positive first.
        hard_negative_size: k (< S).
    """
    _, hardest = tf.math.top_k(scores[:, 1:], k=int(hard_negative_size))
    positive = tf.zeros([tf.shape(scores)[0], 1], tf.int32)
    return tf.concat([positive, hardest + 1], axis=1)


@register_task("retrieval")  # a literal: tests read the registered names from the source
class RetrievalTask(DownstreamTask):
    """Image-text retrieval fine-tuning (spec §5.4, §5.7).

    Args:
        mode: ``standard`` or ``hard_negative``.
        negative_size: N (standard: negatives of each side, official 1; hard_negative: random candidates
            per query, official 399).
        hard_negative_size: k, the hardest candidates kept per query (hard_negative; official 31).
        margin: the hinge margin (official 0.2).
        max_eval_texts: evaluate on the first this-many captions of the eval split (None: all; the gallery
            is then the images of those captions).
        head_learning_rate_multiplier: the rank head's LR multiplier (official: none, 1.0).

    Raises:
        ValueError: an invalid argument (named).
    """

    name = RETRIEVAL_TASK_NAME
    label_keys = ()
    primary_metric = "r_mean"

    def __init__(self, mode: str = "standard", negative_size: int = 1, hard_negative_size: int = 31,
                 margin: float = OFFICIAL_MARGIN, max_eval_texts: Optional[int] = None,
                 head_learning_rate_multiplier: float = 1.0):
        if mode not in MODES:
            raise ValueError(f"task 'retrieval': mode must be one of {MODES}, got {mode!r}")
        for key, value in (("negative_size", negative_size), ("hard_negative_size", hard_negative_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"task 'retrieval': {key} must be a positive integer, got {value!r}")
        if mode == "hard_negative" and hard_negative_size > negative_size:
            raise ValueError(f"task 'retrieval': hard_negative_size ({hard_negative_size}) must be at most "
                             f"negative_size ({negative_size}): the hard negatives are chosen among them")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
            raise ValueError(f"task 'retrieval': margin must be a non-negative number, got {margin!r}")
        if max_eval_texts is not None and (isinstance(max_eval_texts, bool) or not isinstance(max_eval_texts, int)
                                           or max_eval_texts < 2):
            raise ValueError(f"task 'retrieval': max_eval_texts must be an integer >= 2 or null, got {max_eval_texts!r}")
        if head_learning_rate_multiplier <= 0:
            raise ValueError(f"head_learning_rate_multiplier must be > 0, got {head_learning_rate_multiplier}")
        self.mode = mode
        self.negative_size = int(negative_size)
        self.hard_negative_size = int(hard_negative_size)
        self.margin = float(margin)
        self.max_eval_texts = max_eval_texts
        self.head_learning_rate_multiplier = float(head_learning_rate_multiplier)
        self._caption_table = None

    # ------------------------------------------------------------------------------------ model
    def build_head(self, hidden_size: int) -> keras.layers.Layer:
        return ItmRankHead(hidden_size=hidden_size, name="itm_rank")

    def initialize(self, model, init: Optional[str] = None, init_path: Optional[str] = None, log=print) -> None:
        """The backbone and ITM head as every downstream task, then the official ``init_output()``.

        From a pretraining checkpoint (``pretrained`` / ``official``) the head's kept ``itm_output`` takes
        the pretrained ITM classifier and ``rank_output`` its "match" row, so step 0 ranks by the ITM match
        logit (the zero-shot score).
        """
        from uniter_tf.models.official_init import init_output  # pylint: disable=import-outside-toplevel

        super().initialize(model, init=init, init_path=init_path, log=log)
        init = init or self.params["init"]
        if init not in ("pretrained", "official"):
            return
        classifier = self.pretraining_model(model).itm_head.classifier
        model.head.itm_output.kernel.assign(classifier.kernel)
        model.head.itm_output.bias.assign(classifier.bias)
        init_output(model.head)
        log("rank_output initialised from the pretrained ITM head's match row (official init_output)")

    # ------------------------------------------------------------------------------------ inputs
    def caption_table(self):
        """The training captions (the negative-caption pool), read once."""
        from uniter_tf.retrieval.inputs import read_caption_table  # pylint: disable=import-outside-toplevel

        if self._caption_table is None:
            if not self.train_files:
                raise ValueError("task 'retrieval': train_files is empty: give the task's training records")
            from uniter_tf.data.finetune_inputs import list_record_files  # pylint: disable=import-outside-toplevel

            self._caption_table = read_caption_table(list_record_files(self.train_files),
                                                     self.run_param("max_text_length"))
        return self._caption_table

    def build_inputs(self, stream: str, input_context=None, seed: int = 42, training: bool = True):
        """Batches of groups (:func:`uniter_tf.retrieval.inputs.build_group_dataset`); hard_negative: a
        ``(text queries, image queries)`` pair of batches."""
        from uniter_tf.retrieval.inputs import build_group_dataset  # pylint: disable=import-outside-toplevel

        del stream, training  # one endless training stream; evaluation is the full gallery (evaluate)
        global_batch = self.run_param("train_batch_size")
        batch_size = input_context.get_per_replica_batch_size(global_batch) if input_context else global_batch
        options = dict(model_config=self.model_config(), negative_size=self.negative_size, batch_size=batch_size,
                       max_text_length=self.run_param("max_text_length"), input_context=input_context,
                       caption_table=self.caption_table())
        if self.mode == "standard":
            return build_group_dataset("standard", self.train_files, seed=seed, **options)
        # Two independent query streams, as the official two datasets (different shuffles and draws).
        text_queries = build_group_dataset("text_query", self.train_files, seed=seed, **options)
        image_queries = build_group_dataset("image_query", self.train_files, seed=seed + 7919, **options)
        return tf.data.Dataset.zip((text_queries, image_queries))

    def prepare_batch(self, stream: str, batch):
        # Pairs are gathered from the pools inside the loss (mining needs the pools per query).
        del stream
        return batch

    def batch_size(self, batch):
        from uniter_tf.retrieval.inputs import TEXT_INDEX  # pylint: disable=import-outside-toplevel

        groups = batch if self.mode == "standard" else batch[0]
        return tf.shape(groups[TEXT_INDEX])[0]

    # ------------------------------------------------------------------------------------ loss
    def compute_batch_loss(self, model, stream: str, batch, training: bool):
        from uniter_tf.retrieval.inputs import gather_pairs  # pylint: disable=import-outside-toplevel

        del stream
        if self.mode == "standard":
            sample_size = 1 + 2 * self.negative_size
            logits = tf.cast(model(gather_pairs(batch), training=training), tf.float32)
            terms = hinge_terms(logits, sample_size, self.margin)
            return tf.reduce_mean(terms), {"positive_first": tf.reduce_mean(positive_ranked_first(logits, sample_size))}
        losses, metrics = [], {}
        for name, groups in ((TEXT_QUERIES, batch[0]), (IMAGE_QUERIES, batch[1])):
            loss, first = self._hard_negative_loss(model, groups, training)
            losses.append(loss)
            metrics[f"{name}_loss"] = loss
            metrics[f"{name}_positive_first"] = first
        return losses[0] + losses[1], metrics

    def mine_scores(self, model, groups) -> tf.Tensor:
        """``[B, 1 + N]`` logits of every candidate pair of each query, in eval mode, without gradient."""
        from uniter_tf.retrieval.inputs import gather_pairs  # pylint: disable=import-outside-toplevel

        def score_query(group):
            single = {key: value[None] for key, value in group.items()}
            return tf.reshape(tf.cast(model(gather_pairs(single), training=False), tf.float32), [-1])

        # One query at a time (the official scores a query's 400 pairs in one forward): bounded memory.
        sample_size = 1 + self.negative_size
        scores = tf.map_fn(score_query, groups, fn_output_signature=tf.TensorSpec([sample_size], tf.float32),
                           parallel_iterations=1)
        return tf.stop_gradient(scores)

    def _hard_negative_loss(self, model, groups, training: bool):
        from uniter_tf.retrieval.inputs import IMAGE_INDEX, TEXT_INDEX, gather_pairs  # pylint: disable=import-outside-toplevel

        kept = select_hard_negatives(self.mine_scores(model, groups), self.hard_negative_size)
        text_index = tf.gather(groups[TEXT_INDEX], kept, batch_dims=1)
        image_index = tf.gather(groups[IMAGE_INDEX], kept, batch_dims=1)
        logits = tf.cast(model(gather_pairs(groups, text_index, image_index), training=training), tf.float32)
        sample_size = 1 + self.hard_negative_size
        loss = tf.reduce_mean(hinge_terms(logits, sample_size, self.margin))
        return loss, tf.reduce_mean(positive_ranked_first(logits, sample_size))

    # The DownstreamTask per-example interface, for tools that score pairs: the rank logit of a pair.
    def targets_from_features(self, features: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        del features
        return {}

    def compute_loss(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> tf.Tensor:
        """The hinge loss of group-major logits (``1 + 2·negative_size`` rows per caption, standard mode)."""
        del targets
        return tf.reduce_mean(hinge_terms(logits, 1 + 2 * self.negative_size, self.margin))

    def compute_metrics(self, targets: Mapping[str, tf.Tensor], logits: tf.Tensor) -> Dict[str, tf.Tensor]:
        del targets
        return {"positive_first": positive_ranked_first(logits, 1 + 2 * self.negative_size)}

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, model, files=None, max_batches=None, *, seed: int = 43, output_dir=None, step=None):
        """Full-gallery recall (:func:`uniter_tf.retrieval.gallery.evaluate_gallery`) on ``files``.

        ``max_batches`` is ignored: a recall over part of the gallery is not the retrieval metric (use
        ``max_eval_texts`` to evaluate on fewer captions). With ``output_dir`` and ``step`` the score
        matrix goes to ``results/retrieval_{step}_scores.npy`` beside ``retrieval_{step}.json``.
        """
        import os  # pylint: disable=import-outside-toplevel

        from uniter_tf import evaluation  # pylint: disable=import-outside-toplevel
        from uniter_tf.retrieval import gallery  # pylint: disable=import-outside-toplevel

        del max_batches, seed
        files = files or self.eval_files
        if not files:
            raise ValueError("task 'retrieval': no eval files to evaluate on")
        scorer = evaluation.keras_scorer(model.backbone, self.pretraining_model(model).itm_head, self.model_config(),
                                         task_head=model.head, max_text_length=self.run_param("max_text_length"))
        output_prefix = None
        if output_dir is not None and step is not None:
            output_prefix = os.path.join(output_dir, "results", f"retrieval_{step}")
        return gallery.evaluate_gallery(scorer, evaluation.EvalRecords.from_files(files),
                                        output_key=evaluation.VQA_LOGITS, column=0,
                                        batch_size=self.run_param("eval_batch_size"),
                                        max_texts=self.max_eval_texts, output_prefix=output_prefix)

    def export_outputs(self) -> ExportOutputs:
        # The served logit is the rank score; its sigmoid is what the hinge loss was trained on.
        return ExportOutputs(name=self.name, activation="sigmoid")

    # ------------------------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RetrievalTask":
        """Constructs the task from :meth:`get_config`'s dict.

        Raises:
            ValueError: an unknown argument (named).
        """
        arguments = dict(config)
        unknown = sorted(set(arguments) - set(_OWN_PARAMS))
        if unknown:
            raise ValueError(f"task 'retrieval' has no argument(s) {unknown}; it takes {list(_OWN_PARAMS)}")
        return cls(**arguments)

    def get_config(self) -> Dict[str, object]:
        return {"mode": self.mode, "negative_size": self.negative_size, "hard_negative_size": self.hard_negative_size,
                "margin": self.margin, "max_eval_texts": self.max_eval_texts,
                "head_learning_rate_multiplier": self.head_learning_rate_multiplier}


__all__ = ["RetrievalTask", "hinge_terms", "positive_ranked_first", "select_hard_negatives", "MODES",
           "RETRIEVAL_TASK_NAME"]
