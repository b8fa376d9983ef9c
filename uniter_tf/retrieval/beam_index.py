"""The embedding pass of ``uniter index --beam``: the first stage over a gallery as an Apache Beam pipeline.

For galleries too large for one process: the records are read in parallel (``ReadAllFromTFRecord``), one
image part is kept per image id (``CombinePerKey(min)``: deterministic whichever record of the image
comes first), images are batched (``BatchElements``) and embedded by a ``DoFn`` that loads the first stage
once per worker (``setup``), and ``(image id, embedding)`` pairs are written as TFRecord shards of
``tf.train.Example`` (``image_id`` bytes, ``embedding`` float list). :func:`read_embedding_shards` reads
them back for :class:`~uniter_tf.retrieval.index.EmbeddingIndex` (ids sorted). Runs on the DirectRunner by
default; other runners through the usual Beam flags (the workers need the first-stage directory's path to
be readable, e.g. ``gs://``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

IMAGE_ID = "image_id"
EMBEDDING = "embedding"


def _image_part(serialized: bytes) -> Tuple[str, bytes]:
    import tensorflow as tf

    from uniter_tf.evaluation import records as records_lib

    try:
        example = tf.train.Example.FromString(serialized)
        _, image_part = records_lib.split_parts(example)
        image = records_lib.image_id(example).decode("utf-8", "replace")
    except Exception as error:  # a broken protobuf or a record without image_id
        raise ValueError(f"a gallery record cannot be read: {error}") from error
    return image, image_part.SerializeToString()


class _EmbedImages:
    """``DoFn`` body: a batch of ``(image id, image part)`` → ``tf.train.Example`` bytes with the embedding."""

    def __init__(self, stage_dir: str):
        self.stage_dir = stage_dir
        self.stage = None

    def setup(self):
        from uniter_tf.retrieval.first_stage import load_first_stage

        self.stage = load_first_stage(self.stage_dir)

    def process(self, batch):
        import tensorflow as tf

        from uniter_tf.data import schema

        features, positions = [], []
        for image, part in batch:
            try:
                decoded = schema.decode_example(part)
            except ValueError as error:
                raise ValueError(f"image {image!r}: {error}") from error
            dim = self.stage.model_config.region_feature_dim
            if decoded[schema.REGION_FEATURES].shape[-1] != dim:
                raise ValueError(f"image {image!r}: {schema.FEATURE_DIM} is {decoded[schema.REGION_FEATURES].shape[-1]}, "
                                 f"the model expects {dim}")
            features.append(np.asarray(decoded[schema.REGION_FEATURES], np.float32))
            positions.append(np.asarray(decoded[schema.REGION_POSITIONS], np.float32))
        embeddings = self.stage.embed_images(features, positions)
        for (image, _), embedding in zip(batch, embeddings):
            example = tf.train.Example()
            example.features.feature[IMAGE_ID].bytes_list.value.append(image.encode("utf-8"))
            example.features.feature[EMBEDDING].float_list.value.extend(embedding.tolist())
            yield example.SerializeToString()


def embed_gallery_with_beam(features: Sequence[str], stage_dir: str, output_prefix: str,
                            beam_args: Optional[Sequence[str]] = None, batch_size: int = 128) -> List[str]:
    """Runs the pipeline; returns the written shard paths.

    Raises:
        ValueError: no file matches ``features``, or a record cannot be decoded (raised by the runner).
    """
    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    from uniter_tf.evaluation.records import list_record_files

    paths = list_record_files(features)
    if not paths:
        raise ValueError(f"no record file matches {list(features)}")
    body = _EmbedImages(stage_dir)

    class EmbedFn(beam.DoFn):  # pylint: disable=abstract-method
        def setup(self):
            body.setup()

        def process(self, element):
            yield from body.process(element)

    with beam.Pipeline(options=PipelineOptions(list(beam_args or []))) as pipeline:
        _ = (pipeline
             | "Files" >> beam.Create(paths)
             | "Read" >> beam.io.ReadAllFromTFRecord()  # compression from the file name (.gz: GZIP)
             | "ImagePart" >> beam.Map(_image_part)
             | "OnePerImage" >> beam.CombinePerKey(min)
             | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
             | "Embed" >> beam.ParDo(EmbedFn())
             | "Write" >> beam.io.WriteToTFRecord(output_prefix, file_name_suffix=".tfrecord"))
    return sorted(tf.io.gfile.glob(output_prefix + "*.tfrecord"))


def read_embedding_shards(paths: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """``(image ids sorted, [n, d] float32 embeddings)`` from the pipeline's shards.

    Raises:
        ValueError: no shard, an image written twice, or embeddings of different sizes.
    """
    from uniter_tf.evaluation.records import iter_serialized_records

    import tensorflow as tf

    if not paths:
        raise ValueError("the embedding pipeline wrote no shard")
    rows = {}
    for serialized in iter_serialized_records(list(paths)):
        example = tf.train.Example.FromString(serialized)
        image = example.features.feature[IMAGE_ID].bytes_list.value[0].decode("utf-8")
        if image in rows:
            raise ValueError(f"image {image!r} was embedded twice")
        rows[image] = np.asarray(example.features.feature[EMBEDDING].float_list.value, np.float32)
    ids = sorted(rows)
    sizes = {rows[image].shape[0] for image in ids}
    if len(sizes) != 1:
        raise ValueError(f"the embedding shards hold embeddings of sizes {sorted(sizes)}")
    return ids, np.stack([rows[image] for image in ids])


__all__ = ["embed_gallery_with_beam", "read_embedding_shards"]
