"""Test helpers shipped with the library: an independent NumPy reference of the official UNITER
forward (:mod:`.numpy_reference`) used to check the Keras model on non-trivial weights."""
