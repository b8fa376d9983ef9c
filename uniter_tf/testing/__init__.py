"""Test helpers shipped with the library (nothing in the production packages imports them).

* :mod:`.numpy_reference`, :mod:`.numpy_downstream`: an independent NumPy reference of the official UNITER
  forward, used to check the Keras model on non-trivial weights.
* :mod:`.test_case`: the keras-hub style harness (``run_layer_test``, ``run_serialization_test``, ...).
* :mod:`.synthetic_data`: learnable synthetic pretraining records (concept words ↔ region prototypes).
* :mod:`.synthetic_vqa`: learnable synthetic VQA question records (and captions) with an ``ans2label.json``
  (``python -m uniter_tf.testing.synthetic_vqa OUTPUT_DIR``, the input of ``configs/finetune_vqa_tiny.json``).
"""
