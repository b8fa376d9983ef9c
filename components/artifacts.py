"""Custom TFX artifact types of uniter-tf.

* :class:`Images`: a directory of image files (JPEG/PNG), brought in by ``components.image_folder.ImageFolder``
  (fingerprinted) or ``tfx.dsl.Importer``.
* :class:`RegionFeatures`: region-feature extraction output, laid out as ``uniter extract`` writes it::

      <uri>/region_features-00000-of-0000N.tfrecord.gz   canonical per-image records (GZIP TFRecords)
      <uri>/dead_letters-00000-of-00001.jsonl            rejected images with reasons
      <uri>/extraction_summary.json                      counters and configuration

  Custom properties: ``feature_dim``, ``num_soft_labels``, ``images_in``, ``images_ok``, ``dead_letters``
  and one integer per dead-letter reason (see :mod:`uniter_tf.data.dead_letter`).
"""

from tfx.types import artifact


class Images(artifact.Artifact):
    """A directory of image files (the input of region-feature extraction)."""

    TYPE_NAME = "uniter.Images"


class RegionFeatures(artifact.Artifact):
    """Canonical per-image region-feature records and the dead letters of their extraction."""

    TYPE_NAME = "uniter.RegionFeatures"


__all__ = ["Images", "RegionFeatures"]
