"""The RefCOCO reader loads the released refs pickle with no globals allowed (issue 12)."""

import pickle

import pytest

from helpers import ingest_test_data as data
from uniter_tf.data import dead_letter, readers
from uniter_tf.data.readers import refcoco

REFS = [{"sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_16.jpg", "ann_id": 1719310, "ref_id": 0,
         "image_id": 581857, "split": "testB", "category_id": 1,
         "sentences": [{"tokens": ["the", "lady"], "raw": "THE LADY", "sent_id": 0, "sent": "the lady"},
                       {"tokens": ["woman"], "raw": "woman", "sent_id": 1, "sent": "woman"}]}]
INSTANCES = {"images": [{"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "height": 640, "width": 427}],
             "annotations": [{"id": 1719310, "image_id": 581857, "bbox": [103.93, 299.99, 134.22, 177.42],
                              "category_id": 1}]}


class _CreatesFile:
    """Unpickling this with a plain pickle.load would open (create) ``path`` for writing."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _split(stream):
    items, letters = [], []
    for entry in stream:
        (letters if isinstance(entry, dead_letter.DeadLetter) else items).append(entry)
    return items, letters


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_released_refs_pickle_is_read_like_its_json(tmp_path, protocol):
    instances_path = data.write_json(tmp_path / "instances.json", INSTANCES)
    pickle_path = tmp_path / "refs(unc).p"
    pickle_path.write_bytes(pickle.dumps(REFS, protocol=protocol))
    json_path = data.write_json(tmp_path / "refs_unc.json", REFS)
    from_pickle, letters = _split(readers.read_annotations("refcoco", [str(pickle_path)], [instances_path]))
    from_json, _ = _split(readers.read_annotations("refcoco", [json_path], [instances_path]))
    assert not letters
    assert [(item.example_id, item.text, item.target_box) for item in from_pickle] == [
            (item.example_id, item.text, item.target_box) for item in from_json]
    assert [item.example_id for item in from_pickle] == ["ref_0", "ref_1"]


def test_python2_str_bytes_are_decoded_as_latin1(tmp_path):
    # Python 2's protocol-2 SHORT_BINSTRING holding "café" in latin-1, inside a list.
    raw = b"\x80\x02]q\x00U\x04caf\xe9q\x01a."
    assert pickle.loads(raw, encoding="latin1") == ["caf\u00e9"]  # plain data: the stock loader agrees
    path = tmp_path / "refs.p"
    path.write_bytes(raw)
    assert refcoco.load_plain_pickle(str(path)) == ["caf\u00e9"]


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    created = tmp_path / "pwned.txt"
    payload = pickle.dumps([REFS[0], _CreatesFile(str(created))], protocol=2)
    # The same bytes through the unrestricted loader would create the file (this is a real exploit).
    control = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_CreatesFile(str(control)))).close()
    assert control.exists()

    path = tmp_path / "refs(unc).p"
    path.write_bytes(payload)
    with pytest.raises(refcoco.UnsafePickleError, match="builtins.*open|io.*open"):
        refcoco.load_plain_pickle(str(path))
    assert not created.exists()

    instances_path = data.write_json(tmp_path / "instances.json", INSTANCES)
    items, letters = _split(readers.read_annotations("refcoco", [str(path)], [instances_path]))
    assert not items and not created.exists()
    assert len(letters) == 1 and letters[0].reason == dead_letter.UNSAFE_INPUT and letters[0].kind == "input"
    assert "refused" in letters[0].detail and "refs(unc).p" in letters[0].detail


@pytest.mark.parametrize("payload", [
        pickle.dumps(dead_letter.DeadLetter("a", dead_letter.BAD_LABEL, "c", "d"), protocol=4),  # any class, even a harmless one
        b"cos\nsystem\n(S'touch /nonexistent/x'\ntR.",  # protocol 0 GLOBAL + REDUCE
        b"\x80\x02(cbuiltins\nobject\no.",  # OBJ opcode
])
def test_every_global_is_refused(tmp_path, payload):
    path = tmp_path / "refs.p"
    path.write_bytes(payload)
    with pytest.raises(refcoco.UnsafePickleError, match="global"):
        refcoco.load_plain_pickle(str(path))


def test_truncated_pickle_is_unreadable_input(tmp_path):
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(REFS, protocol=2)[:40])
    instances_path = data.write_json(tmp_path / "instances.json", INSTANCES)
    _, letters = _split(readers.read_annotations("refcoco", [str(path)], [instances_path]))
    assert [letter.reason for letter in letters] == [dead_letter.UNREADABLE_INPUT]
    assert "cannot read the pickle" in letters[0].detail
