"""Tests of uniter_tf.tokenization: vendored vocabulary, WordPiece ids, preprocessor, SavedModel use."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from uniter_tf import tokenization
from uniter_tf.assets import rebuild_vocab
from uniter_tf.tokenization import UniterPreprocessor, UniterTokenizer

VOCAB_MD5 = "bb6ca9b42e790e5cd986bbb16444d0e0"


@pytest.fixture(scope="module")
def tokenizer():
    return UniterTokenizer()


def _write_vocab(path, entries):
    path.write_text("".join(entry + "\n" for entry in entries), encoding="utf-8")
    return str(path)


TINY_UNCASED_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "cafe", "!", "play", "##ing",
                      "straße", "\u2026"]


def test_vendored_vocab_is_bert_base_cased():
    with open(tokenization.DEFAULT_VOCAB_PATH, "rb") as vocab_file:
        data = vocab_file.read()
    assert len(data) == 213450
    assert hashlib.md5(data).hexdigest() == VOCAB_MD5
    assert os.path.isfile(os.path.join(tokenization.ASSETS_DIR, "NOTICE"))


def test_rebuild_script_reproduces_vendored_vocab(tmp_path):
    output = tmp_path / "vocab.txt"
    assert rebuild_vocab.main(["--output", str(output)]) == 0
    with open(tokenization.DEFAULT_VOCAB_PATH, "rb") as vendored:
        assert output.read_bytes() == vendored.read()


def test_special_ids_and_size(tokenizer):
    assert tokenizer.vocab_size == tokenization.BERT_BASE_CASED_VOCAB_SIZE == 28996
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (
            0, 100, 101, 102, 103)
    assert tokenizer.token_to_id("!") == 106
    with pytest.raises(KeyError, match="notavocabentry"):
        tokenizer.token_to_id("notavocabentry")


def test_known_ids(tokenizer):
    assert tokenizer.encode(["Hello world"]) == [[8667, 1362]]
    assert tokenizer.encode("Hello world") == [8667, 1362]
    # Cased: "hello" is a different entry from "Hello".
    assert tokenizer.encode("hello") != tokenizer.encode("Hello")
    assert tokenizer.ids_to_tokens(tokenizer.encode("unaffordable")) == ["un", "##af", "##ford", "##able"]
    assert tokenizer.encode([]) == []


def test_basic_tokenizer_rules(tokenizer):
    # Punctuation is split off, every Unicode space separates, control characters are dropped.
    assert tokenizer.encode("world!") == tokenizer.encode("world !")
    assert tokenizer.encode("Hello\u00a0world") == tokenizer.encode("Hello world")
    assert tokenizer.encode("Hel\x00lo\u200b world\t\n") == tokenizer.encode("Hello world")
    assert tokenizer.ids_to_tokens(tokenizer.encode("isn't")) == ["isn", "'", "t"]
    # CJK ideographs are single tokens.
    assert len(tokenizer.encode("中文")) == 2
    assert tokenizer.encode("x" * 101) == [tokenizer.unk_id]


def test_matches_blingfire_reference_tokenizer(tokenizer):
    import blingfire

    model_path = os.path.join(os.path.dirname(blingfire.__file__), "bert_base_cased_tok.bin")
    handle = blingfire.load_model(model_path)
    sentences = [
            "A man is eating food.", "Two dogs play in the snow, near a red fire-hydrant.",
            "The U.S.A. and e-mail co-operate; she said: 'ok'", "isn't it?! (yes) -- \"quoted\" 3.14 $5 #tag",
            "Schwarzenegger rides a unicycle at 10:30pm", "café naïve Ünïcödé 日本語",
    ]
    try:
        expected = [[int(i) for i in blingfire.text_to_ids(handle, text, 256, 100, True)] for text in sentences]
    finally:
        blingfire.free_model(handle)
    assert tokenizer.encode(sentences) == expected


def test_ragged_call_and_detokenize(tokenizer):
    token_ids = tokenizer(tf.constant(["Hello world", "A man is eating food."]))
    assert isinstance(token_ids, tf.RaggedTensor)
    assert token_ids.dtype == tf.int32
    assert token_ids.row_lengths().numpy().tolist() == [2, 6]
    scalar_ids = tokenizer(tf.constant("Hello world"))
    assert scalar_ids.numpy().tolist() == [8667, 1362]

    text = tokenizer.detokenize(tf.constant([[101, 8667, 1362, 102, 0], [101, 1185, 20592, 1895, 102]]))
    assert [t.decode() for t in text.numpy()] == ["Hello world", tokenizer.decode([1185, 20592, 1895])]
    assert tokenizer.decode(tokenizer.encode("unaffordable Schwarzenegger")) == "unaffordable Schwarzenegger"
    assert tokenizer.decode([101, 8667, 102], skip_special_tokens=False) == "[CLS] Hello [SEP]"
    tokens = tokenizer.id_to_token(tf.ragged.constant([[101, 8667], [1362]]))
    assert tokens.to_list() == [[b"[CLS]", b"Hello"], [b"world"]]
    with pytest.raises(ValueError, match="28996"):
        tokenizer.ids_to_tokens([28996])
    with pytest.raises(tf.errors.InvalidArgumentError):
        tokenizer.id_to_token(tf.constant([5, 30000]))


def test_bad_inputs_raise_clear_errors(tokenizer):
    with pytest.raises(TypeError, match="item 1"):
        tokenizer.encode(["fine", 3])
    with pytest.raises(TypeError, match="strings"):
        tokenizer.tokenize(tf.constant([1, 2]))


def test_vocab_by_path_lower_case_and_size_check(tmp_path):
    vocab_path = _write_vocab(tmp_path / "vocab.txt", TINY_UNCASED_VOCAB)
    uncased = UniterTokenizer(vocab_path, lower_case=True)
    assert uncased.encode("HELLO Café playing!") == [5, 7, 9, 10, 8]
    # BERT's uncased rule is str.lower + NFD + accent stripping: no case folding (ß stays), no compatibility
    # decomposition (the ellipsis stays one punctuation token).
    assert uncased.encode("STRAßE Café\u2026") == [11, 7, 12]
    cased = UniterTokenizer(vocab_path)
    assert cased.encode("HELLO") == [cased.unk_id]
    assert UniterTokenizer(vocab_path, model_vocab_size=len(TINY_UNCASED_VOCAB)).vocab_size == 13
    with pytest.raises(ValueError, match=r"13 entries.*UniterConfig.vocab_size.*28996"):
        UniterTokenizer(vocab_path, model_vocab_size=28996)


def test_bad_vocabularies(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        UniterTokenizer(str(tmp_path / "missing.txt"))
    no_mask = _write_vocab(tmp_path / "no_mask.txt", [e for e in TINY_UNCASED_VOCAB if e != "[MASK]"])
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        UniterTokenizer(no_mask)
    duplicate = _write_vocab(tmp_path / "dup.txt", TINY_UNCASED_VOCAB + ["hello"])
    with pytest.raises(ValueError, match="'hello' appears twice"):
        UniterTokenizer(duplicate)


def test_preprocessor_fixed_length(tokenizer):
    preprocessor = UniterPreprocessor(tokenizer, sequence_length=6)
    outputs = preprocessor(tf.constant(["Hello world", "A man is eating food."]))
    assert outputs["token_ids"].shape == (2, 6)
    assert outputs["token_ids"].dtype == tf.int32 and outputs["text_mask"].dtype == tf.int32
    np.testing.assert_array_equal(outputs["token_ids"].numpy(), [[101, 8667, 1362, 102, 0, 0],
                                                                 [101, 138, 1299, 1110, 5497, 102]])
    np.testing.assert_array_equal(outputs["text_mask"].numpy(), [[1, 1, 1, 1, 0, 0], [1] * 6])
    scalar = preprocessor(tf.constant("Hello"))
    assert scalar["token_ids"].numpy().tolist() == [101, 8667, 102, 0, 0, 0]


def test_preprocessor_buckets_and_ids_input(tokenizer):
    preprocessor = UniterPreprocessor(tokenizer, sequence_length=16, bucket_boundaries=[4, 8])
    assert preprocessor(tf.constant(["Hello world"]))["token_ids"].shape == (1, 4)
    assert preprocessor(tf.constant(["Hello world", "A man is eating food."]))["token_ids"].shape == (2, 8)
    long_text = " ".join(["word"] * 40)
    assert preprocessor(tf.constant([long_text]))["token_ids"].shape == (1, 16)
    # Pre-tokenized ids (the canonical record's token_ids) are packed the same way.
    word_ids = tf.ragged.constant([[8667, 1362], [138]], dtype=tf.int64)
    packed = preprocessor(word_ids)
    np.testing.assert_array_equal(packed["token_ids"].numpy(), [[101, 8667, 1362, 102], [101, 138, 102, 0]])
    with pytest.raises(ValueError, match="strictly increasing"):
        UniterPreprocessor(tokenizer, sequence_length=16, bucket_boundaries=[8, 4])
    with pytest.raises(ValueError, match="sequence_length=16"):
        UniterPreprocessor(tokenizer, sequence_length=16, bucket_boundaries=[4, 32])


def test_preprocessor_in_tf_data_and_config_round_trip(tokenizer):
    preprocessor = UniterPreprocessor(tokenizer, sequence_length=8, bucket_boundaries=[4])
    dataset = tf.data.Dataset.from_tensor_slices(["Hello world", "a b c"]).batch(2).map(preprocessor)
    batch = next(iter(dataset))
    # The longest row (5) does not fit the bucket of 4, so the batch is padded to sequence_length.
    np.testing.assert_array_equal(batch["token_ids"].numpy(), [[101, 8667, 1362, 102, 0, 0, 0, 0],
                                                               [101, 170, 171, 172, 102, 0, 0, 0]])
    restored = UniterPreprocessor.from_config(preprocessor.get_config())
    assert restored.sequence_length == 8 and restored.bucket_boundaries == [4]
    assert restored.tokenizer.vocab_size == 28996
    restored_tokenizer = UniterTokenizer.from_config(tokenizer.get_config())
    assert restored_tokenizer.encode("Hello world") == [8667, 1362]


def test_export_archive_round_trip(tmp_path, tokenizer):
    import keras

    preprocessor = UniterPreprocessor(tokenizer, sequence_length=8)
    archive = keras.export.ExportArchive()
    archive.track(preprocessor)
    archive.add_endpoint("preprocess", preprocessor.call,
                         input_signature=[tf.TensorSpec([None], tf.string)])
    export_dir = str(tmp_path / "preprocessor")
    archive.write_out(export_dir, verbose=False)

    import tensorflow_text  # noqa: F401  (registers the WordPiece ops before loading)
    reloaded = tf.saved_model.load(export_dir)
    outputs = reloaded.preprocess(tf.constant(["Hello world"]))
    np.testing.assert_array_equal(outputs["token_ids"].numpy(), [[101, 8667, 1362, 102, 0, 0, 0, 0]])


def test_tokenize_command(capsys):
    import json

    from uniter_tf.cli import main

    assert main(["tokenize", "Hello world", "--sequence-length", "6", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["token_ids"] == [8667, 1362]
    assert record["tokens"] == ["Hello", "world"]
    assert record["model_token_ids"] == [101, 8667, 1362, 102, 0, 0]
    assert record["text_mask"] == [1, 1, 1, 1, 0, 0]


def test_special_tokens_typed_in_text_stay_whole(tokenizer, tmp_path):
    # BERT's never_split: a whitespace-delimited word equal to a special token is that token.
    assert tokenizer.encode("A [MASK] rides a horse [SEP]") == (
            tokenizer.encode("A") + [103] + tokenizer.encode("rides a horse") + [102])
    # Glued to punctuation or other text it is ordinary text, as in BERT.
    assert tokenizer.encode("[MASK].") == tokenizer.encode("[ MASK ] .")
    assert tokenizer.mask_id not in tokenizer.encode("[MASK].")
    uncased = UniterTokenizer(_write_vocab(tmp_path / "vocab.txt", TINY_UNCASED_VOCAB), lower_case=True)
    assert uncased.encode("HELLO [MASK] [mask]") == [5, 4, 1, 1, 1]


def _reference_pack(rows, sequence_length, width, cls_id=101, sep_id=102, pad_id=0):
    """Plain-Python [CLS] w… [SEP] packing: keep the first sequence_length - 2 ids, pad to width."""
    token_ids, text_mask = [], []
    for row in rows:
        packed = [cls_id] + list(row[:sequence_length - 2]) + [sep_id]
        token_ids.append(packed + [pad_id] * (width - len(packed)))
        text_mask.append([1] * len(packed) + [0] * (width - len(packed)))
    return np.array(token_ids, np.int32), np.array(text_mask, np.int32)


@pytest.mark.parametrize("sequence_length, padded_length", [(3, None), (10, None), (10, 14), (12, "tensor")])
def test_pack_token_ids_with_keras_nlp_packer_matches_reference(sequence_length, padded_length):
    rng = np.random.default_rng(sequence_length)
    rows = [list(rng.integers(5, 999, size=size)) for size in (0, 1, 3, 8, 9, 10, 20)]
    ragged = tf.ragged.constant(rows, dtype=tf.int64)
    longest = min(max(len(row) for row in rows) + 2, sequence_length)
    width = {None: sequence_length, "tensor": longest}.get(padded_length, padded_length)
    argument = tf.constant(longest) if padded_length == "tensor" else padded_length
    token_ids, text_mask = tokenization.pack_token_ids(ragged, sequence_length, cls_id=101, sep_id=102,
                                                       padded_length=argument)
    expected_ids, expected_mask = _reference_pack(rows, sequence_length, width)
    assert token_ids.dtype == text_mask.dtype == tf.int32
    np.testing.assert_array_equal(token_ids.numpy(), expected_ids)
    np.testing.assert_array_equal(text_mask.numpy(), expected_mask)
    if padded_length != "tensor":
        assert token_ids.shape[1] == width  # a static width stays static

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.int64)])
    def traced(word_ids):
        return tokenization.pack_token_ids(word_ids, sequence_length, cls_id=101, sep_id=102, padded_length=argument)

    np.testing.assert_array_equal(traced(ragged)[0].numpy(), expected_ids)


def test_tokenizer_from_preset_names_and_directories(tmp_path, tokenizer):
    base = UniterTokenizer.from_preset("uniter-base")
    assert base.model_vocab_size == 28996 and not base.lower_case
    assert base.encode(["A man rides a horse."]) == tokenizer.encode(["A man rides a horse."])
    assert UniterTokenizer.from_preset("tiny").vocab_size == 28996
    with pytest.raises(ValueError, match=r"'uniter-mini' has a 30522-entry vocabulary.*vocabulary="):
        UniterTokenizer.from_preset("uniter-mini")
    with pytest.raises(ValueError, match="unknown UniterConfig preset"):
        UniterTokenizer.from_preset("uniter-huge")
    # save_to_preset -> from_preset keeps the vocabulary and the casing.
    uncased = UniterTokenizer(TINY_UNCASED_VOCAB, lower_case=True)
    uncased.save_to_preset(str(tmp_path / "preset"))
    restored = UniterTokenizer.from_preset(str(tmp_path / "preset"))
    assert restored.vocabulary == TINY_UNCASED_VOCAB and restored.lower_case
    assert restored.encode(["Hello WORLD playing"]) == uncased.encode(["Hello WORLD playing"])
    # A converted model directory (config.json only) of the bundled size gets the bundled vocabulary.
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "config.json").write_text('{"vocab_size": 28996, "hidden_size": 32, "num_hidden_layers": 1, '
                                           '"num_attention_heads": 2, "intermediate_size": 64}')
    assert UniterTokenizer.from_preset(str(converted)).model_vocab_size == 28996
    (converted / "config.json").write_text('{"vocab_size": 30522}')
    with pytest.raises(ValueError, match="has no tokenizer.json, vocabulary.txt or vocab.txt"):
        UniterTokenizer.from_preset(str(converted))
    preprocessor = UniterPreprocessor.from_preset("uniter-base", sequence_length=8)
    token_ids = preprocessor(tf.constant(["Hello world"]))["token_ids"].numpy().tolist()
    assert token_ids == [[101, 8667, 1362, 102, 0, 0, 0, 0]]
