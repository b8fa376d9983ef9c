"""``uniter tokenize``: show the WordPiece ids and pieces UNITER's tokenizer gives a text."""

from __future__ import annotations

NAME = "tokenize"
HELP = "Tokenize texts with the UNITER WordPiece tokenizer and print ids, pieces and the packed model input."


def add_arguments(parser):
    parser.add_argument("texts", nargs="+", help="One or more texts (quote each).")
    parser.add_argument("--vocab", default=None,
                        help="vocab.txt to use (default: the vendored bert-base-cased vocabulary).")
    parser.add_argument("--lower-case", action="store_true", help="Lower-case first (for uncased vocabularies).")
    parser.add_argument("--sequence-length", type=int, default=None,
                        help="Also print token_ids/text_mask packed with [CLS]/[SEP] and padded to this length.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object per text.")


def run(args) -> int:
    import json

    from uniter_tf.tokenization import UniterPreprocessor, UniterTokenizer

    tokenizer = UniterTokenizer(args.vocab, lower_case=args.lower_case)
    preprocessor = None
    if args.sequence_length is not None:
        preprocessor = UniterPreprocessor(tokenizer, sequence_length=args.sequence_length)
    for text, token_ids in zip(args.texts, tokenizer.encode(args.texts)):
        record = {"text": text, "token_ids": token_ids, "tokens": tokenizer.ids_to_tokens(token_ids)}
        if preprocessor is not None:
            packed = preprocessor([text])
            record["model_token_ids"] = packed["token_ids"].numpy()[0].tolist()
            record["text_mask"] = packed["text_mask"].numpy()[0].tolist()
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"text:      {text}")
            print(f"ids:       {' '.join(str(token_id) for token_id in token_ids)}")
            print(f"pieces:    {' '.join(record['tokens'])}")
            if preprocessor is not None:
                print(f"token_ids: {' '.join(str(token_id) for token_id in record['model_token_ids'])}")
                print(f"text_mask: {' '.join(str(bit) for bit in record['text_mask'])}")
    return 0
