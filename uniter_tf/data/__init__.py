"""Data layer of uniter-tf: the canonical record and everything that produces or reads it.

* :mod:`uniter_tf.data.schema`: canonical ``tf.train.Example`` feature names, builder and parser.
* :mod:`uniter_tf.data.boxes`: the 7-d region position feature and the UNITER box-selection rule.
* :mod:`uniter_tf.data.tfrecord_io`: sharded GZIP TFRecord writer and the ``tf.data`` reader.
* :mod:`uniter_tf.data.sample_data`: deterministic rendered sample dataset.
* ``readers/``, ``importers/``, ``ingest.py``, ``dead_letter.py``: annotation readers, feature importers and
  the ingest pipeline that joins them into canonical text records (docs/data_ingest.md).

Submodules import TensorFlow lazily where they can, so importing this package stays cheap.
"""
