"""BERT WordPiece tokenization for UNITER on tensorflow-text, usable eagerly, in tf.data and in SavedModels.

UNITER tokenizes with ``bert-base-cased`` (28,996 ids, no lower-casing); its vocabulary is vendored as
``uniter_tf/assets/bert-base-cased-vocab.txt`` (see ``uniter_tf/assets/NOTICE``). Other vocabularies are
taken by path, with ``lower_case=True`` for uncased ones.

Two Keras layers:

* :class:`UniterTokenizer`: strings -> WordPiece ids (a ``tf.RaggedTensor``, no ``[CLS]``/``[SEP]``),
  ids -> token strings / text, and an eager ``encode(list_of_strings) -> list of lists of ints`` for Beam.
* :class:`UniterPreprocessor`: strings (or WordPiece ids) -> the backbone's ``token_ids`` and ``text_mask``:
  ``[CLS] w1 … wn [SEP]``, truncated to ``sequence_length`` and padded to it or to a bucket boundary.

Basic tokenization follows BERT's (``pytorch-pretrained-bert`` ``BasicTokenizer``, which the official
UNITER ``prepro.py`` uses): drop control characters, turn every Unicode space into a separator, split on
whitespace, punctuation and CJK ideographs; for uncased vocabularies also lower-case, NFD-normalise and
strip accents. Checked against pytorch-pretrained-bert 0.6.2 on 523 texts (ASCII, accents, CJK, Hangul,
emoji, control characters, random mixes, special tokens typed in the text): identical ids. As in BERT, a
whitespace-delimited word that is exactly ``[MASK]``, ``[CLS]``, ``[SEP]``, ``[PAD]`` or ``[UNK]`` stays that
special token ("never_split"), so fill-in-the-blank inputs such as ``"A [MASK] rides a horse."`` work.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_VOCAB_PATH = os.path.join(ASSETS_DIR, "bert-base-cased-vocab.txt")
BERT_BASE_CASED_VOCAB_SIZE = 28996
#: The tokenizer's file in a preset directory (:meth:`UniterTokenizer.save_to_preset`).
TOKENIZER_CONFIG_FILE = "tokenizer.json"

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)

# BERT's _clean_text: tab/newline/CR and every Unicode space separator become a plain space; control,
# format, unassigned and private-use characters and U+FFFD are dropped (RE2's \s is ASCII only).
_SPACE_PATTERN = r"[\t\n\r\p{Zs}]"
_DROPPED_CHARACTER_PATTERN = r"[\p{C}\x{FFFD}]"

# A whitespace-delimited special token anywhere in a (cleaned) text.
_SPECIAL_WORD_PATTERN = (r"(?s)(?:.*\s)?(?:" + "|".join(re.escape(token) for token in SPECIAL_TOKENS)
                         + r")(?:\s.*)?")

VocabularyArg = Union[None, str, os.PathLike, Sequence[str]]


def load_vocabulary(path: Union[str, os.PathLike]) -> List[str]:
    """Reads a BERT ``vocab.txt``: one entry per line, line number = id.

    Args:
        path: the file.

    Returns:
        The entries in id order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is empty or has a duplicate entry (it would make ids ambiguous).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file {path!r} does not exist")
    with open(path, "r", encoding="utf-8") as vocab_file:
        entries = [line.rstrip("\n").rstrip("\r") for line in vocab_file]
    _check_entries(entries, source=path)
    return entries


def _check_entries(entries: Sequence[str], source: str) -> None:
    if not entries:
        raise ValueError(f"vocabulary {source} is empty")
    seen = {}
    for token_id, entry in enumerate(entries):
        if entry in seen:
            raise ValueError(f"vocabulary {source}: entry {entry!r} appears twice (ids {seen[entry]} and {token_id})")
        seen[entry] = token_id
    missing = [token for token in SPECIAL_TOKENS if token not in seen]
    if missing:
        raise ValueError(f"vocabulary {source} lacks the special token(s) {missing}")


def check_vocab_size(vocab_size: int, model_vocab_size: int, source: str = "the vocabulary") -> None:
    """Raises if a vocabulary does not fit the model's word-embedding table.

    Args:
        vocab_size: number of entries of the vocabulary.
        model_vocab_size: rows of the word table (``UniterConfig.vocab_size``).
        source: how to name the vocabulary in the message.

    Raises:
        ValueError: naming both sizes when they differ.
    """
    if int(vocab_size) != int(model_vocab_size):
        raise ValueError(
                f"{source} has {vocab_size} entries but the model's word table (UniterConfig.vocab_size) has "
                f"{model_vocab_size} rows; use the vocabulary the model was trained with")


@functools.lru_cache(maxsize=8)
def _fast_bert_models(entries: Tuple[str, ...], max_bytes_per_word: int) -> Tuple[bytes, bytes]:
    """Compiled FastWordpiece and FastBertNormalizer models, built once per vocabulary and process.

    Building takes about a second for a BERT vocabulary, and FastBertTokenizer would then copy each buffer
    through a Python list of ints; passing ready uint8 tensors avoids both on every later construction.
    """
    from tensorflow_text.core.pybinds import pywrap_fast_bert_normalizer_model_builder as normalizer_builder
    from tensorflow_text.core.pybinds import pywrap_fast_wordpiece_tokenizer_model_builder as wordpiece_builder

    wordpiece_model = wordpiece_builder.build_fast_wordpiece_model(
            list(entries), max_bytes_per_word, "##", UNK_TOKEN, False, False)
    normalizer_model = normalizer_builder.build_fast_bert_normalizer_model(False)
    return bytes(wordpiece_model), bytes(normalizer_model)


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterTokenizer(keras.layers.Layer):
    """BERT WordPiece tokenizer: strings to ids (``RaggedTensor``), ids back to token strings and text.

    Calling the layer (or :meth:`tokenize`) works eagerly, inside ``tf.data`` and inside a SavedModel (track
    the layer with ``keras.export.ExportArchive.track``). Loading such a SavedModel needs
    ``import tensorflow_text`` first, for the WordPiece ops.

    Args:
        vocabulary: ``None`` for the vendored ``bert-base-cased`` vocabulary, a path to a ``vocab.txt``, or
            the list of entries.
        lower_case: lower-case and strip accents before WordPiece (for uncased vocabularies).
        model_vocab_size: if given, the number of rows of the model's word table
            (``UniterConfig.vocab_size``); a vocabulary of another size is an error.
        max_bytes_per_word: longer words become ``[UNK]`` (BERT's limit is 100 characters).
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ...).

    Example:
        >>> tokenizer = UniterTokenizer()
        >>> tokenizer.encode(["Hello world"])
        [[8667, 1362]]
    """

    def __init__(self,
                 vocabulary: VocabularyArg = None,
                 lower_case: bool = False,
                 model_vocab_size: Optional[int] = None,
                 max_bytes_per_word: int = 100,
                 **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        # Strings in, ragged ids out: keep Keras from casting inputs to the layer's float dtype.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True

        if vocabulary is None:
            entries, source = load_vocabulary(DEFAULT_VOCAB_PATH), DEFAULT_VOCAB_PATH
        elif isinstance(vocabulary, (str, os.PathLike)):
            entries, source = load_vocabulary(vocabulary), os.fspath(vocabulary)
        else:
            entries, source = [str(entry) for entry in vocabulary], "the vocabulary list"
            _check_entries(entries, source=source)
        if model_vocab_size is not None:
            check_vocab_size(len(entries), model_vocab_size, source=f"vocabulary {source}")
        if max_bytes_per_word < 1:
            raise ValueError(f"max_bytes_per_word must be positive, got {max_bytes_per_word}")

        vocabulary_arg = os.fspath(vocabulary) if isinstance(vocabulary, os.PathLike) else vocabulary
        if isinstance(vocabulary_arg, (list, tuple)):
            vocabulary_arg = tuple(vocabulary_arg)
        self.lower_case = bool(lower_case)
        self.model_vocab_size = model_vocab_size
        self.max_bytes_per_word = int(max_bytes_per_word)
        # Plain Python containers of ~30k strings: set past Keras/TF attribute tracking, which would wrap and
        # walk them element by element (most of the construction time otherwise). They hold no TF state.
        object.__setattr__(self, "vocabulary_arg", vocabulary_arg)
        object.__setattr__(self, "_entries", tuple(entries))
        object.__setattr__(self, "_token_to_id", {entry: token_id for token_id, entry in enumerate(entries)})

        # FastBertTokenizer: basic tokenization (whitespace, punctuation, CJK split) and WordPiece in one C++
        # kernel, 2-3x faster than the regex-based BertTokenizer and identical on BERT's rules; its model is a
        # constant buffer, so SavedModels need no lookup-table asset.
        wordpiece_model, normalizer_model = _fast_bert_models(self._entries, self.max_bytes_per_word)
        self._bert_tokenizer = tf_text.FastBertTokenizer(
                vocab=self._entries,
                suffix_indicator="##",
                max_bytes_per_word=self.max_bytes_per_word,
                token_out_type=tf.int64,
                unknown_token=UNK_TOKEN,
                lower_case_nfd_strip_accents=False,
                fast_wordpiece_model_buffer=tf.constant(np.frombuffer(wordpiece_model, np.uint8)),
                fast_bert_normalizer_model_buffer=tf.constant(np.frombuffer(normalizer_model, np.uint8)))
        self._id_to_token_table = tf.constant(self._entries, dtype=tf.string)
        self._special_tokens = tf.constant(SPECIAL_TOKENS, dtype=tf.string)
        self._special_ids = tf.constant([self._token_to_id[token] for token in SPECIAL_TOKENS], dtype=tf.int32)
        self.built = True

    # ------------------------------------------------------------------------------------------- presets

    @classmethod
    def from_preset(cls, preset: Union[str, os.PathLike], **kwargs) -> "UniterTokenizer":
        """The tokenizer of a named preset or of a preset directory (keras-hub's ``from_preset``); no download.

        A preset name (:data:`uniter_tf.config.PRESETS`) whose vocabulary is the bundled ``bert-base-cased``
        one (28,996 entries: ``uniter-base``, ``uniter-large``, ``tiny``) gives the cased tokenizer sized for
        that model. ``uniter-mini`` uses the BERT-uncased vocabulary, which is not bundled: pass
        ``vocabulary=`` (its ``vocab.txt``) and ``lower_case=True``. A directory gives the tokenizer
        :meth:`save_to_preset` wrote there (``tokenizer.json`` + ``vocabulary.txt``), else its ``vocab.txt`` /
        ``vocabulary.txt``, else, when its ``config.json`` (a :class:`~uniter_tf.config.UniterConfig`, as
        ``uniter convert`` writes) has the bundled vocabulary's size, the bundled one.

        Args:
            preset: a preset name or a directory.
            **kwargs: constructor arguments that override the preset's (``vocabulary``, ``lower_case``, ...).

        Raises:
            ValueError: an unknown preset name, or a preset whose vocabulary is not available here.
        """
        from uniter_tf.config import UniterConfig  # pylint: disable=import-outside-toplevel

        text = os.fspath(preset)
        if not os.path.isdir(text):
            config = UniterConfig.from_preset(text)
            arguments = {"model_vocab_size": config.vocab_size}
            if config.vocab_size != BERT_BASE_CASED_VOCAB_SIZE and "vocabulary" not in kwargs:
                raise ValueError(f"preset {text!r} has a {config.vocab_size}-entry vocabulary; only bert-base-cased "
                                 f"({BERT_BASE_CASED_VOCAB_SIZE} entries) is bundled: pass vocabulary=<vocab.txt> "
                                 "(and lower_case=True for an uncased one)")
            arguments.update(kwargs)
            return cls(**arguments)
        config_path = os.path.join(text, TOKENIZER_CONFIG_FILE)
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as handle:
                arguments = json.load(handle)
            vocabulary = arguments.get("vocabulary")
            if isinstance(vocabulary, str) and not os.path.isabs(vocabulary):
                arguments["vocabulary"] = os.path.join(text, vocabulary)
            arguments.update(kwargs)
            return cls(**arguments)
        arguments = {}
        for file_name in ("vocabulary.txt", "vocab.txt"):
            if os.path.isfile(os.path.join(text, file_name)):
                arguments["vocabulary"] = os.path.join(text, file_name)
                break
        model_config_path = os.path.join(text, "config.json")
        if os.path.isfile(model_config_path):
            arguments["model_vocab_size"] = UniterConfig.from_json(model_config_path, allow_unknown=True).vocab_size
        arguments.update(kwargs)
        if arguments.get("vocabulary") is None and arguments.get("model_vocab_size") != BERT_BASE_CASED_VOCAB_SIZE:
            raise ValueError(f"preset directory {text!r} has no {TOKENIZER_CONFIG_FILE}, vocabulary.txt or vocab.txt, "
                             "and its config.json does not name the bundled vocabulary's size "
                             f"({BERT_BASE_CASED_VOCAB_SIZE}); pass vocabulary=")
        return cls(**arguments)

    def save_to_preset(self, preset_dir: Union[str, os.PathLike]) -> None:
        """Writes ``tokenizer.json`` (the constructor arguments) and ``vocabulary.txt`` into ``preset_dir``, which
        :meth:`from_preset` reads back."""
        preset_dir = os.fspath(preset_dir)
        tf.io.gfile.makedirs(preset_dir)
        with tf.io.gfile.GFile(os.path.join(preset_dir, "vocabulary.txt"), "w") as handle:
            handle.write("".join(entry + "\n" for entry in self._entries))
        arguments = {"vocabulary": "vocabulary.txt", "lower_case": self.lower_case,
                     "model_vocab_size": self.model_vocab_size, "max_bytes_per_word": self.max_bytes_per_word}
        with tf.io.gfile.GFile(os.path.join(preset_dir, TOKENIZER_CONFIG_FILE), "w") as handle:
            handle.write(json.dumps(arguments, indent=2, sort_keys=True) + "\n")

    # ----------------------------------------------------------------------------------------- vocabulary

    @property
    def vocabulary(self) -> List[str]:
        """The vocabulary entries in id order (a copy)."""
        return list(self._entries)

    @property
    def vocab_size(self) -> int:
        """Number of vocabulary entries."""
        return len(self._entries)

    @property
    def pad_id(self) -> int:
        """Id of ``[PAD]`` (0 in BERT vocabularies)."""
        return self._token_to_id[PAD_TOKEN]

    @property
    def unk_id(self) -> int:
        """Id of ``[UNK]``."""
        return self._token_to_id[UNK_TOKEN]

    @property
    def cls_id(self) -> int:
        """Id of ``[CLS]``."""
        return self._token_to_id[CLS_TOKEN]

    @property
    def sep_id(self) -> int:
        """Id of ``[SEP]``."""
        return self._token_to_id[SEP_TOKEN]

    @property
    def mask_id(self) -> int:
        """Id of ``[MASK]``."""
        return self._token_to_id[MASK_TOKEN]

    def token_to_id(self, token: str) -> int:
        """Id of one vocabulary entry; raises ``KeyError`` naming the token if it is not in the vocabulary."""
        try:
            return self._token_to_id[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary ({self.vocab_size} entries)") from None

    def ids_to_tokens(self, token_ids: Iterable[int]) -> List[str]:
        """Eager id -> entry lookup on Python ints; raises ``ValueError`` naming an id out of range."""
        tokens = []
        for token_id in token_ids:
            token_id = int(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
            tokens.append(self._entries[token_id])
        return tokens

    # ------------------------------------------------------------------------------------------- in-graph

    def _clean_text(self, text: tf.Tensor) -> tf.Tensor:
        text = tf.strings.regex_replace(text, _SPACE_PATTERN, " ")
        return tf.strings.regex_replace(text, _DROPPED_CHARACTER_PATTERN, "")

    def _lower_case(self, text: tf.Tensor) -> tf.Tensor:
        # BERT's uncased rule: str.lower, NFD, drop combining marks. (FastBertTokenizer's own lower-casing
        # case-folds and applies compatibility forms: "ß" -> "ss", "…" -> "...", unlike BERT.)
        text = tf.strings.lower(text, encoding="utf-8")
        text = tf_text.normalize_utf8(text, "NFD")
        return tf.strings.regex_replace(text, r"\p{Mn}", "")

    def _tokenize_batch(self, batch: tf.Tensor) -> tf.RaggedTensor:
        """``[B]`` strings -> int32 ``RaggedTensor [B, None]`` of WordPiece ids."""
        cleaned = self._clean_text(batch)
        # The word-by-word path that honours special tokens costs ~30%; batches without them skip it.
        has_special_word = tf.reduce_any(tf.strings.regex_full_match(cleaned, _SPECIAL_WORD_PATTERN))
        return tf.cond(has_special_word, lambda: self._tokenize_words(cleaned),
                       lambda: self._tokenize_text(cleaned))

    def _tokenize_text(self, cleaned: tf.Tensor) -> tf.RaggedTensor:
        if self.lower_case:
            cleaned = self._lower_case(cleaned)
        return tf.cast(self._bert_tokenizer.tokenize(cleaned), tf.int32)

    def _tokenize_words(self, cleaned: tf.Tensor) -> tf.RaggedTensor:
        # BERT splits on whitespace first; a word that is exactly a special token ("[MASK]", ...) is kept
        # whole and never lower-cased (pytorch-pretrained-bert's never_split), every other word goes through
        # punctuation splitting and WordPiece.
        words = tf.strings.split(cleaned)  # [B, (W)]
        word_strings = words.flat_values
        matches = tf.equal(word_strings[:, tf.newaxis], self._special_tokens[tf.newaxis, :])
        is_special = tf.reduce_any(matches, axis=1)
        special_ids = tf.gather(self._special_ids, tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32))
        if self.lower_case:
            word_strings = self._lower_case(word_strings)
        pieces = tf.cast(self._bert_tokenizer.tokenize(word_strings), tf.int32)  # [BW, (P)]
        ordinary = tf.ragged.boolean_mask(
                pieces, pieces.with_flat_values(tf.repeat(tf.logical_not(is_special), pieces.row_lengths())))
        special = tf.ragged.boolean_mask(special_ids[:, tf.newaxis], is_special[:, tf.newaxis])
        per_word = tf.concat([special, ordinary], axis=1)  # each word: [special id] or its pieces
        return words.with_flat_values(per_word).merge_dims(1, 2)

    def tokenize(self, text) -> Union[tf.Tensor, tf.RaggedTensor]:
        """Strings -> WordPiece ids, without ``[CLS]``/``[SEP]``.

        Args:
            text: a string scalar, a ``[B]`` string tensor, or anything ``tf.convert_to_tensor`` turns into one.

        Returns:
            For a scalar, an int32 ``[n]`` tensor; for ``[B]`` strings, an int32 ``RaggedTensor [B, None]``.
        """
        text = tf.convert_to_tensor(text)
        if text.dtype != tf.string:
            raise TypeError(f"UniterTokenizer.tokenize expects strings, got a {text.dtype.name} tensor")
        if text.shape.rank is not None and text.shape.rank > 1:
            raise ValueError(f"UniterTokenizer.tokenize expects a scalar or a [batch] vector of strings, "
                             f"got shape {text.shape}")
        scalar_input = text.shape.rank == 0
        batch = tf.reshape(text, [-1])
        token_ids = self._tokenize_batch(batch)
        if scalar_input:
            return token_ids[0]
        return token_ids

    def call(self, inputs):
        return self.tokenize(inputs)

    def id_to_token(self, token_ids):
        """Ids -> vocabulary entries (``##`` kept), for tensors or ragged tensors of any shape."""
        if isinstance(token_ids, tf.RaggedTensor):
            return token_ids.with_flat_values(self.id_to_token(token_ids.flat_values))
        token_ids = tf.convert_to_tensor(token_ids)
        if not token_ids.dtype.is_integer:
            raise TypeError(f"id_to_token expects integer ids, got {token_ids.dtype.name}")
        checks = [tf.debugging.assert_less(tf.cast(token_ids, tf.int64), tf.constant(self.vocab_size, tf.int64),
                                           message="token id outside the vocabulary"),
                  tf.debugging.assert_non_negative(token_ids, message="negative token id")]
        with tf.control_dependencies(checks):
            return tf.gather(self._id_to_token_table, token_ids)

    def detokenize(self, token_ids, skip_special_tokens: bool = True):
        """Ids -> text: pieces joined with spaces and ``##`` continuations glued (BERT's ``convert_tokens_to_string``).

        Args:
            token_ids: ``[n]`` ids (one text) or ``[B, n]`` ids, dense or ragged.
            skip_special_tokens: drop ``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]`` and ``[MASK]`` first.

        Returns:
            A string scalar for ``[n]`` ids, a ``[B]`` string tensor for ``[B, n]`` ids.
        """
        if not isinstance(token_ids, tf.RaggedTensor):
            token_ids = tf.convert_to_tensor(token_ids)
        token_ids = tf.cast(token_ids, tf.int32)
        scalar_output = token_ids.shape.rank == 1
        if scalar_output:
            token_ids = token_ids[tf.newaxis]
        if not isinstance(token_ids, tf.RaggedTensor):
            token_ids = tf.RaggedTensor.from_tensor(token_ids)
        if skip_special_tokens:
            is_special = tf.reduce_any(tf.equal(token_ids.flat_values[:, tf.newaxis], self._special_ids), axis=-1)
            token_ids = tf.ragged.boolean_mask(token_ids, token_ids.with_flat_values(tf.logical_not(is_special)))
        tokens = self.id_to_token(token_ids)
        text = tf.strings.reduce_join(tokens, axis=-1, separator=" ")
        text = tf.strings.regex_replace(text, " ##", "")
        return text[0] if scalar_output else text

    # ------------------------------------------------------------------------------------------------ eager

    def encode(self, texts: Union[str, Sequence[str]]) -> Union[List[int], List[List[int]]]:
        """Eager API: strings -> WordPiece ids as Python lists (for Beam and scripts).

        Args:
            texts: one string, or a sequence of strings.

        Returns:
            A list of ints for one string; a list of lists of ints for a sequence.

        Raises:
            TypeError: naming the position of an item that is not a string.
        """
        if isinstance(texts, (str, bytes)):
            return self.encode([texts])[0]
        texts = list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, (str, bytes)):
                raise TypeError(f"encode: item {position} is a {type(text).__name__}, expected a string")
        if not texts:
            return []
        token_ids = self._compiled_tokenize(tf.constant(texts, dtype=tf.string))
        return token_ids.to_list()

    @property
    def _compiled_tokenize(self):
        # One traced function reused across calls: eager op-by-op dispatch costs more than the tokenization.
        # Kept out of Keras/TF attribute tracking so that it is not exported with the layer.
        compiled = self.__dict__.get("_compiled_tokenize_fn")
        if compiled is None:
            compiled = tf.function(self.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
            object.__setattr__(self, "_compiled_tokenize_fn", compiled)
        return compiled

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Eager API: a list of ids -> text (see :meth:`detokenize`)."""
        token_ids = [int(token_id) for token_id in token_ids]
        self.ids_to_tokens(token_ids)  # validates the range with a message naming the bad id
        if not token_ids:
            return ""
        return self.detokenize(tf.constant(token_ids, tf.int32), skip_special_tokens).numpy().decode("utf-8")

    def get_config(self):
        config = super().get_config()
        config.update({
                "vocabulary": self.vocabulary_arg if not isinstance(self.vocabulary_arg, (list, tuple))
                else list(self.vocabulary_arg),
                "lower_case": self.lower_case,
                "model_vocab_size": self.model_vocab_size,
                "max_bytes_per_word": self.max_bytes_per_word,
        })
        return config


@functools.lru_cache(maxsize=32)
def _start_end_packer(sequence_length: int, cls_id: int, sep_id: int, pad_id: int):
    """keras-nlp's ``StartEndPacker`` for one setting, built once per process and setting."""
    # Imported on first use: keras_nlp costs 1-3 s to import, which scripts that only tokenize
    # (Beam ingest, ``encode``) should not pay.
    from keras_nlp.layers import StartEndPacker  # pylint: disable=import-outside-toplevel

    return StartEndPacker(sequence_length=sequence_length, start_value=cls_id, end_value=sep_id,
                          pad_value=pad_id, return_padding_mask=True, dtype="int32")


def pack_token_ids(word_ids: tf.RaggedTensor,
                   sequence_length: int,
                   cls_id: int,
                   sep_id: int,
                   pad_id: int = 0,
                   padded_length=None):
    """Adds ``[CLS]``/``[SEP]`` to WordPiece ids, truncates, and pads to a dense batch.

    The packing is keras-nlp's ``StartEndPacker`` (keep the first ``sequence_length - 2`` ids, wrap them in
    ``[CLS]`` … ``[SEP]``, pad); a narrower ``padded_length`` then drops only padding columns.

    Args:
        word_ids: int ``RaggedTensor [B, None]`` of ids without ``[CLS]``/``[SEP]`` (e.g. the canonical
            record's ``token_ids``).
        sequence_length: the longest output, ``[CLS]`` and ``[SEP]`` included; longer texts lose their tail.
        cls_id: id of ``[CLS]``.
        sep_id: id of ``[SEP]``.
        pad_id: id used for padding.
        padded_length: width of the output (an int or a scalar int tensor, at least the longest row);
            ``None`` pads to ``sequence_length``.

    Returns:
        ``(token_ids, text_mask)``, both int32 ``[B, padded_length]``.
    """
    if sequence_length < 2:
        raise ValueError(f"sequence_length must leave room for [CLS] and [SEP], got {sequence_length}")
    if not isinstance(word_ids, tf.RaggedTensor):
        raise TypeError(f"pack_token_ids expects a RaggedTensor [B, None] of ids, got {type(word_ids).__name__}")
    packer = _start_end_packer(int(sequence_length), int(cls_id), int(sep_id), int(pad_id))
    # StartEndPacker slices before it concatenates [SEP]; pre-truncating keeps the concatenation small for
    # long texts and gives the same rows.
    token_ids, text_mask = packer(tf.cast(word_ids[:, :sequence_length - 2], tf.int32))
    token_ids = tf.cast(token_ids, tf.int32)
    text_mask = tf.cast(text_mask, tf.int32)
    width = sequence_length if padded_length is None else padded_length
    if isinstance(width, int):
        if width < sequence_length:
            token_ids, text_mask = token_ids[:, :width], text_mask[:, :width]
        elif width > sequence_length:
            padding = [[0, 0], [0, width - sequence_length]]
            token_ids = tf.pad(token_ids, padding, constant_values=pad_id)
            text_mask = tf.pad(text_mask, padding, constant_values=0)
        # A static width gives the outputs a static shape.
        token_ids.set_shape([None, width])
        text_mask.set_shape([None, width])
        return token_ids, text_mask
    width = tf.cast(width, tf.int32)
    padding = [[0, 0], [0, tf.maximum(width - sequence_length, 0)]]
    return (tf.pad(token_ids, padding, constant_values=pad_id)[:, :width],
            tf.pad(text_mask, padding, constant_values=0)[:, :width])


@keras.saving.register_keras_serializable(package="uniter_tf")
class UniterPreprocessor(keras.layers.Layer):
    """Text -> the backbone's ``token_ids`` and ``text_mask`` (keras-hub style preprocessor).

    Output rows are ``[CLS] w1 … wn [SEP]`` (int32), right-padded with ``[PAD]``; ``text_mask`` is 1 on
    real tokens including ``[CLS]``/``[SEP]``. Texts longer than ``sequence_length`` are truncated.

    Args:
        tokenizer: a :class:`UniterTokenizer`; ``None`` builds the default cased one.
        sequence_length: the longest output row, ``[CLS]``/``[SEP]`` included.
        bucket_boundaries: ``None`` pads every batch to ``sequence_length`` (one static shape, for XLA and
            serving). A sorted list of lengths pads each batch to the smallest boundary that holds its longest
            row (``sequence_length`` acts as the last boundary), so short batches stay short.
        **kwargs: passed to ``keras.layers.Layer``.

    Inputs: a ``[B]`` (or scalar) string tensor, or an int ``RaggedTensor [B, None]`` of WordPiece ids
    without ``[CLS]``/``[SEP]``. Output: ``{"token_ids": [B, L], "text_mask": [B, L]}`` (``[L]`` for a scalar).
    """

    def __init__(self,
                 tokenizer: Optional[UniterTokenizer] = None,
                 sequence_length: int = 60,
                 bucket_boundaries: Optional[Sequence[int]] = None,
                 **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if isinstance(tokenizer, dict):
            tokenizer = keras.saving.deserialize_keras_object(tokenizer)
        if tokenizer is not None and not isinstance(tokenizer, UniterTokenizer):
            raise TypeError(f"tokenizer must be a UniterTokenizer, got {type(tokenizer).__name__}")
        sequence_length = int(sequence_length)
        if sequence_length < 3:
            raise ValueError(f"sequence_length must be at least 3 ([CLS], one token, [SEP]), got {sequence_length}")
        if bucket_boundaries is not None:
            bucket_boundaries = [int(boundary) for boundary in bucket_boundaries]
            if not bucket_boundaries or bucket_boundaries != sorted(set(bucket_boundaries)):
                raise ValueError(f"bucket_boundaries must be a non-empty strictly increasing list, "
                                 f"got {bucket_boundaries}")
            if bucket_boundaries[0] < 3 or bucket_boundaries[-1] > sequence_length:
                raise ValueError(f"bucket_boundaries must lie in [3, sequence_length={sequence_length}], "
                                 f"got {bucket_boundaries}")
        self.tokenizer = tokenizer if tokenizer is not None else UniterTokenizer()
        self.sequence_length = sequence_length
        self.bucket_boundaries = bucket_boundaries
        widths = list(bucket_boundaries or [])
        if not widths or widths[-1] != sequence_length:
            widths.append(sequence_length)
        self._padding_widths = tf.constant(widths, dtype=tf.int32)
        self.built = True

    @classmethod
    def from_preset(cls, preset: Union[str, os.PathLike], sequence_length: int = 60,
                    bucket_boundaries: Optional[Sequence[int]] = None, **kwargs) -> "UniterPreprocessor":
        """A preprocessor around :meth:`UniterTokenizer.from_preset` (``kwargs`` go to the tokenizer)."""
        return cls(tokenizer=UniterTokenizer.from_preset(preset, **kwargs), sequence_length=sequence_length,
                   bucket_boundaries=bucket_boundaries)

    def _padded_width(self, longest_row: tf.Tensor) -> Union[int, tf.Tensor]:
        if self.bucket_boundaries is None:
            return self.sequence_length
        # Index of the first width that holds the longest row; rows are already truncated to the last width.
        bucket = tf.reduce_sum(tf.cast(self._padding_widths < longest_row, tf.int32))
        return self._padding_widths[bucket]

    def call(self, inputs):
        if isinstance(inputs, tf.RaggedTensor):
            if not inputs.dtype.is_integer:
                raise TypeError(f"UniterPreprocessor: ragged inputs must be integer WordPiece ids, "
                                f"got {inputs.dtype.name}")
            word_ids, scalar_input = inputs, False
        else:
            inputs = tf.convert_to_tensor(inputs)
            if inputs.dtype != tf.string:
                raise TypeError(f"UniterPreprocessor expects strings or a RaggedTensor of ids, "
                                f"got a {inputs.dtype.name} tensor")
            scalar_input = inputs.shape.rank == 0
            word_ids = self.tokenizer.tokenize(tf.reshape(inputs, [-1]))
        longest_row = tf.minimum(tf.cast(tf.reduce_max(word_ids.row_lengths()), tf.int32) + 2,
                                 self.sequence_length)
        token_ids, text_mask = pack_token_ids(
                word_ids, self.sequence_length, cls_id=self.tokenizer.cls_id, sep_id=self.tokenizer.sep_id,
                pad_id=self.tokenizer.pad_id, padded_length=self._padded_width(longest_row))
        if scalar_input:
            token_ids, text_mask = token_ids[0], text_mask[0]
        return {"token_ids": token_ids, "text_mask": text_mask}

    def get_config(self):
        config = super().get_config()
        config.update({
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "sequence_length": self.sequence_length,
                "bucket_boundaries": None if self.bucket_boundaries is None else list(self.bucket_boundaries),
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("tokenizer"), dict):
            config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)


# ------------------------------------------------------------------------------------------ multi-segment
# VCR text (spec §4.5, §5.6): several segments ``[CLS] q [SEP] a [SEP] (r [SEP])`` and references to
# detected objects written ``[i]`` in the text.

#: How many object-reference word ids follow the WordPiece vocabulary (official ``NUM_SPECIAL_TOKENS``).
NUM_REFERENCE_IDS = 81
#: A reference to detection ``i`` as written in segment strings: ``[i]`` (digits only, spaces allowed inside).
_REFERENCE_IN_TEXT = r"\[\s*(\d+)\s*\]"
_REFERENCE_WORD = r"\[\d+\]"
#: The official token types of the VCR segments: question 0, answer 2, rationale 3 (1 is the image type).
QUESTION_TYPE_ID, ANSWER_TYPE_ID, RATIONALE_TYPE_ID = 0, 2, 3


def tokenize_with_references(tokenizer: UniterTokenizer, texts, num_reference_ids: int = NUM_REFERENCE_IDS
                             ) -> tf.RaggedTensor:
    """Strings with object references -> WordPiece ids, each ``[i]`` becoming the one word id ``vocab + i``.

    The VCR annotations refer to detections by index; UNITER's VCR word table has ``num_reference_ids``
    (81) extra rows after the WordPiece vocabulary (28996..29076 for ``bert-base-cased``). A reference is
    written ``[i]`` anywhere in the text (``"Why is [0] above [1]?"``); it becomes the single id
    ``tokenizer.vocab_size + i``. Every other word is tokenized exactly as :meth:`UniterTokenizer.tokenize`
    tokenizes it (a text without references gives the same ids). In-graph: usable in ``tf.data``, a
    ``tf.function`` and a SavedModel.

    Args:
        tokenizer: the WordPiece tokenizer.
        texts: a ``[B]`` string tensor (or a list of strings).
        num_reference_ids: reference ids after the vocabulary; ``[i]`` with ``i >= num_reference_ids`` fails.

    Returns:
        int32 ``RaggedTensor [B, None]``.

    Raises:
        tf.errors.InvalidArgumentError: a reference index ``>= num_reference_ids`` (the message says so).
    """
    texts = tf.reshape(tf.convert_to_tensor(texts, dtype=tf.string), [-1])
    # References become whitespace-delimited words "[i]"; BERT's basic tokenization would split their
    # brackets into punctuation pieces.
    spaced = tf.strings.regex_replace(tokenizer._clean_text(texts), _REFERENCE_IN_TEXT, r" [\1] ")
    words = tf.strings.split(spaced)  # [B, (W)]
    flat_words = words.flat_values
    is_reference = tf.strings.regex_full_match(flat_words, _REFERENCE_WORD)
    digits = tf.where(is_reference, tf.strings.regex_replace(flat_words, r"[\[\]]", ""), "0")
    # int64 first: an absurd index ("[99999999999]") must fail the range check, not wrap around.
    index = tf.strings.to_number(tf.strings.substr(digits, 0, 18), out_type=tf.int64)
    index = tf.where(tf.strings.length(digits) > 18, tf.constant(2 ** 62, tf.int64), index)
    check = tf.debugging.assert_less(
            index, tf.constant(num_reference_ids, tf.int64),
            message=f"object reference [i] with i >= {num_reference_ids}: VCR has {num_reference_ids} reference ids")
    with tf.control_dependencies([check]):
        reference_ids = tf.cast(index, tf.int32) + tokenizer.vocab_size
    pieces = tokenizer.tokenize(tf.where(is_reference, "", flat_words))  # [BW, (P)]
    references = tf.ragged.boolean_mask(reference_ids[:, tf.newaxis], is_reference[:, tf.newaxis])
    per_word = tf.concat([references, pieces], axis=1)  # a reference word tokenizes to nothing else
    return words.with_flat_values(per_word).merge_dims(1, 2)


def trim_segments(segments: Sequence[tf.RaggedTensor], max_text_length: int) -> List[tf.RaggedTensor]:
    """Cuts segments so that each row's total length (``[CLS]``/``[SEP]`` not counted) is at most ``max_text_length``.

    The rule (tensorflow-text's ``ShrinkLongestTrimmer``): while a row is too long, its longest segment
    loses its last token; among equally long segments the earliest loses first. A short question therefore
    keeps every token while a long rationale is cut. The official code never truncates: training drops
    over-long examples (``max_txt_len`` 220, spec §7.14); this rule is for evaluation and serving, where
    no example may be lost.

    Args:
        segments: ``[B, None]`` ragged ids, one tensor per segment.
        max_text_length: the longest total, at least the number of segments.

    Returns:
        The trimmed segments (same order).
    """
    if max_text_length < len(segments):
        raise ValueError(f"max_text_length {max_text_length} cannot hold {len(segments)} segments")
    return tf_text.ShrinkLongestTrimmer(int(max_text_length)).trim(list(segments))


def pack_segments(segments: Sequence[tf.RaggedTensor], segment_type_ids: Sequence[int], cls_id: int, sep_id: int,
                  max_text_length: Optional[int] = None) -> Tuple[tf.RaggedTensor, tf.RaggedTensor]:
    """``[CLS] s0 [SEP] s1 [SEP] … [SEP]`` with the official VCR token types (``data/vcr.py:102-159``).

    Types: ``[CLS]`` and the first segment take the first segment's type; each later segment's type also
    covers the ``[SEP]`` in front of it; the final ``[SEP]`` takes the last segment's type. For VCR Q→A
    (types 0, 2): ``[CLS] q`` 0, ``[SEP] a [SEP]`` 2; QA→R (0, 2, 3): ``[CLS] q`` 0, ``[SEP] a`` 2,
    ``[SEP] r [SEP]`` 3 (spec §5.6).

    Args:
        segments: int ``[B, None]`` ragged ids without special tokens, one tensor per segment.
        segment_type_ids: the type id of each segment.
        cls_id: id of ``[CLS]``.
        sep_id: id of ``[SEP]``.
        max_text_length: if given, :func:`trim_segments` first (special tokens not counted).

    Returns:
        ``(token_ids, token_type_ids)``, int32 ``RaggedTensor [B, None]`` of equal row lengths.
    """
    if not segments or len(segments) != len(segment_type_ids):
        raise ValueError(f"pack_segments needs one type id per segment, got {len(segments)} segments and "
                         f"{len(segment_type_ids)} type ids")
    segments = [tf.cast(segment, tf.int32) for segment in segments]
    if max_text_length is not None:
        segments = trim_segments(segments, max_text_length)

    def constant_row(like, value):
        return tf.fill([like.nrows(), 1], tf.constant(value, tf.int32))

    first = segments[0]
    token_parts = [constant_row(first, cls_id), first]
    type_parts = [constant_row(first, segment_type_ids[0]), tf.zeros_like(first) + int(segment_type_ids[0])]
    for segment, type_id in zip(segments[1:], segment_type_ids[1:]):
        token_parts += [constant_row(segment, sep_id), segment]
        type_parts += [constant_row(segment, type_id), tf.zeros_like(segment) + int(type_id)]
    token_parts.append(constant_row(first, sep_id))
    type_parts.append(constant_row(first, segment_type_ids[-1]))
    return tf.concat(token_parts, axis=1), tf.concat(type_parts, axis=1)


def encode_segments(tokenizer: UniterTokenizer, segment_texts: Sequence, segment_type_ids: Sequence[int],
                    max_text_length: Optional[int] = None, num_reference_ids: int = NUM_REFERENCE_IDS
                    ) -> dict:
    """Segment strings -> the backbone's dense ``token_ids``, ``token_type_ids`` and ``text_mask``.

    What training, export and serving share for VCR: :func:`tokenize_with_references` on every segment,
    then :func:`pack_segments`; rows are right-padded with ``[PAD]`` (type 0, mask 0, as the official
    collate). Works on ``[B]`` string tensors inside a ``tf.function``.

    Args:
        tokenizer: the WordPiece tokenizer.
        segment_texts: one ``[B]`` string tensor per segment.
        segment_type_ids: one type id per segment (VCR Q→A: ``(0, 2)``, QA→R: ``(0, 2, 3)``).
        max_text_length: the longest total of segment tokens (see :func:`trim_segments`); None: no cut.
        num_reference_ids: object-reference ids after the vocabulary.

    Returns:
        ``{"token_ids", "token_type_ids", "text_mask"}``, int32 ``[B, L]``.
    """
    segments = [tokenize_with_references(tokenizer, texts, num_reference_ids) for texts in segment_texts]
    token_ids, type_ids = pack_segments(segments, segment_type_ids, tokenizer.cls_id, tokenizer.sep_id,
                                        max_text_length)
    return {"token_ids": token_ids.to_tensor(tokenizer.pad_id), "token_type_ids": type_ids.to_tensor(0),
            "text_mask": tf.ones_like(token_ids).to_tensor(0)}
