"""Data files shipped with uniter-tf (see NOTICE for their origin and licences).

* ``bert-base-cased-vocab.txt``: the BERT-Base cased WordPiece vocabulary UNITER uses (28,996 entries),
  rebuilt by :mod:`uniter_tf.assets.rebuild_vocab`.
"""
