"""uniter-tf: UNITER (UNiversal Image-TExt Representation learning) in TensorFlow / Keras 3.

The library layer: model, tokenization, data, training and export. It never imports TFX, so it can
be used on its own; the TFX components live in the top-level ``components`` package.
"""

__version__ = "0.1.0"
