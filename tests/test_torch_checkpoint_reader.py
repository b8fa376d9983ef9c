"""The PyTorch checkpoint reader (uniter_tf.checkpoints.torch_format): no torch, no pickle code run.

Real files written by torch.save (tests/fixtures/torch_checkpoints/, a verbatim copy of
../shared/checkpoints/ so that a clone tests itself): the official tiny parity model in the zip layout
(float32) and the legacy layout (float16), and a malicious pickle. Files with non-contiguous, shared and bfloat16 storages are crafted
with the module's own zip writer.
"""

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest

from uniter_tf.checkpoints import official, torch_format

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CHECKPOINTS = os.path.join(FIXTURES, "torch_checkpoints")
SOURCE_WEIGHTS = os.path.join(FIXTURES, "parity_official", "state_dict.npz")
ZIP_FP32 = os.path.join(CHECKPOINTS, "state_dict_zip_fp32.pt")
LEGACY_FP16 = os.path.join(CHECKPOINTS, "state_dict_legacy_fp16.pt")
MALICIOUS = os.path.join(CHECKPOINTS, "malicious.pt")
# What malicious.pt's pickle runs when unpickled by plain pickle (its README): os.system("touch <this>").
PWNED_MARKER = "/tmp/uniter_pwned_by_checkpoint"
TIED = ("cls.predictions.decoder.weight", "uniter.embeddings.word_embeddings.weight")


@pytest.fixture(scope="module")
def source_weights():
    with np.load(SOURCE_WEIGHTS, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _key_order(path):
    with np.load(path, allow_pickle=False) as archive:
        return list(archive.files)


# ------------------------------------------------------------------------------------ real torch files
def test_zip_fp32_file_reads_equal_to_its_source_with_the_tied_storage_shared(source_weights):
    state = torch_format.load(ZIP_FP32)  # lazy
    assert list(state) == _key_order(SOURCE_WEIGHTS)
    assert all(isinstance(value, torch_format.LazyTensor) for value in state.values())
    for key, expected in source_weights.items():
        assert state[key].shape == expected.shape, key
        value = np.asarray(state[key])
        assert value.dtype == np.float32, key
        np.testing.assert_array_equal(value, expected, err_msg=key)
    decoder, words = (state[key] for key in TIED)
    assert decoder.storage_key == words.storage_key and decoder.same_data(words)
    assert not state["feat_regress.weight"].same_data(state["uniter.img_embeddings.img_linear.weight"])

    eager = torch_format.load(ZIP_FP32, lazy=False)
    assert np.shares_memory(eager[TIED[0]], eager[TIED[1]])  # one storage read once, as torch does
    np.testing.assert_array_equal(eager["uniter.pooler.dense.weight"], source_weights["uniter.pooler.dense.weight"])


def test_legacy_fp16_file_reads_the_float16_rounding_of_its_source(source_weights):
    state = official.read_state_dict(LEGACY_FP16)
    assert list(state) == _key_order(SOURCE_WEIGHTS)
    for key, expected in source_weights.items():
        assert state[key].dtype == np.float16, key
        np.testing.assert_array_equal(state[key], expected.astype(np.float16), err_msg=key)
    assert np.shares_memory(state[TIED[0]], state[TIED[1]])
    lazy = torch_format.load(LEGACY_FP16)
    assert lazy[TIED[0]].same_data(lazy[TIED[1]])


@pytest.fixture
def no_side_effects(monkeypatch):
    """Records any os.system call and removes the malicious file's marker before the test."""
    import posix

    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command) or 0)
    monkeypatch.setattr(posix, "system", lambda command: calls.append(command) or 0)
    if os.path.exists(PWNED_MARKER):
        os.remove(PWNED_MARKER)
    yield calls
    assert not calls, f"the checkpoint ran os.system{calls}"
    assert not os.path.exists(PWNED_MARKER)


def test_malicious_pickle_is_refused_before_anything_runs(no_side_effects):
    with open(MALICIOUS, "rb") as handle:
        assert b"posix\nsystem" in handle.read()  # the file really carries the call
    for lazy in (True, False):
        with pytest.raises(torch_format.UnsafeCheckpointError, match=r"refused to load the global posix\.system"):
            torch_format.load(MALICIOUS, lazy=lazy)
    with pytest.raises(ValueError, match=r"malicious\.pt: refused to load the global posix\.system"):
        official.read_state_dict(MALICIOUS)


def _zip_with_pickle(path, pickle_bytes, top="archive"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/data.pkl", pickle_bytes)
        archive.writestr(f"{top}/version", "3\n")


class _Evil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch /tmp/uniter_pwned_by_checkpoint')",))


@pytest.mark.parametrize("payload, refused", [
        ({"w": _Evil()}, r"__builtin__\.eval"),  # protocol 2 names Python 2's module
        ({"w": print}, r"__builtin__\.print"),
        ({"w": np.zeros(3)}, "numpy"),  # numpy's own reconstruct functions are code too
])
def test_any_global_outside_the_allow_list_is_refused_by_name(tmp_path, no_side_effects, payload, refused):
    path = tmp_path / "evil.pt"
    _zip_with_pickle(path, pickle.dumps(payload, protocol=2))
    with pytest.raises(torch_format.UnsafeCheckpointError, match=refused):
        torch_format.load(path)


def test_legacy_layout_refuses_a_malicious_object_pickle(tmp_path, no_side_effects):
    path = tmp_path / "evil_legacy.pt"
    with open(path, "wb") as handle:
        for header in (torch_format.MAGIC_NUMBER, torch_format.PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        pickle.dump({"w": _Evil()}, handle, protocol=2)
        pickle.dump([], handle, protocol=2)
    with pytest.raises(torch_format.UnsafeCheckpointError, match=r"__builtin__\.eval"):
        torch_format.load(path)


def test_module_persistent_ids_are_refused(tmp_path):
    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("module", "MyModule", "model.py", "source") if obj == "MODULE" else None

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump({"model": "MODULE"})
    path = tmp_path / "module.pt"
    _zip_with_pickle(path, buffer.getvalue())
    with pytest.raises(torch_format.UnsafeCheckpointError, match="persistent id 'module'"):
        torch_format.load(path)


# ---------------------------------------------------------------------------------- crafted zip files
def test_own_writer_round_trips_non_contiguous_shared_and_bfloat16_storages(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 5)).astype(np.float32)
    flat = np.arange(40, dtype=np.float16)
    bf16 = rng.standard_normal((3, 4)).astype(ml_dtypes.bfloat16)
    tensors = {
            "w": base,
            "w_tied": base,                        # the same tensor twice: one storage
            "w_t": base.T,                          # transposed view: strides (1, 5) on the same storage
            "w_cols": base[1:5:2, ::2],             # offset 5, strides (10, 2)
            "flat_head": flat[:10],                 # slices of one fp16 storage, offsets 0 and 20
            "flat_tail": flat[20:].reshape(4, 5),
            "bf16": bf16,
            "bf16_t": bf16.T,
            "expanded": np.broadcast_to(np.arange(3, dtype=np.int64), (4, 3)),  # stride 0
            "scalar": np.array(7, np.int32),
            "empty": np.zeros((0, 4), np.float32),
            "mask": np.array([True, False, True]),
            "bytes": np.arange(5, dtype=np.uint8),
            "fortran": np.asfortranarray(rng.standard_normal((3, 2))),  # float64, a non-contiguous root
    }
    path = tmp_path / "crafted.pt"
    torch_format.save_zip(path, tensors)

    lazy = torch_format.load(path)
    assert list(lazy) == list(tensors)
    assert lazy["w_tied"].same_data(lazy["w"])
    assert lazy["w_t"].storage_key == lazy["w"].storage_key and lazy["w_t"].stride == (1, 5)
    assert not lazy["w_t"].is_contiguous() and not lazy["w_t"].same_data(lazy["w"])
    assert (lazy["w_cols"].storage_offset, lazy["w_cols"].stride) == (5, (10, 2))
    assert lazy["flat_tail"].storage_key == lazy["flat_head"].storage_key
    assert lazy["flat_tail"].storage_offset == 20
    assert lazy["bf16"].dtype == np.dtype(ml_dtypes.bfloat16) and lazy["bf16_t"].stride == (1, 4)
    assert lazy["expanded"].stride == (0, 1)
    assert len({value.storage_key for value in lazy.values()}) == 9
    for key, expected in tensors.items():
        for value in (np.asarray(lazy[key]), torch_format.load(path, lazy=False)[key]):
            assert value.dtype == expected.dtype and value.shape == expected.shape, key
            np.testing.assert_array_equal(value, expected, err_msg=key)
    # bfloat16 widens exactly to float32.
    np.testing.assert_array_equal(np.asarray(lazy["bf16"], np.float32), bf16.astype(np.float32))


def test_own_writer_layout_matches_torch_zip_files(tmp_path, source_weights):
    with zipfile.ZipFile(ZIP_FP32) as archive:
        torch_names = {name.split("/", 1)[1] for name in archive.namelist()}
    path = tmp_path / "uniter_tiny.pt"
    tensors = dict(source_weights)
    tensors[TIED[0]] = tensors[TIED[1]]  # tied as in a live model (and in the torch file)
    torch_format.save_zip(path, ((key, value) for key, value in tensors.items()))
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert all(name.startswith("uniter_tiny/") for name in names)  # torch names the top folder by the stem
        assert {name.split("/", 1)[1] for name in names} <= torch_names
        with open(path, "rb") as handle:
            for info in archive.infolist():
                if "/data/" in info.filename:
                    assert info.compress_type == zipfile.ZIP_STORED
                    offset = torch_format._zip_data_offset(str(path), info)  # pylint: disable=protected-access
                    assert offset % torch_format.STORAGE_ALIGNMENT == 0, info.filename
                    handle.seek(offset)
                    assert handle.read(info.file_size) == archive.read(info.filename)
    read = torch_format.load(path, lazy=False)
    for key, value in source_weights.items():
        np.testing.assert_array_equal(read[key], value, err_msg=key)


def test_big_endian_files_are_swapped(tmp_path):
    values = {"a": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "b": np.arange(4, dtype=np.int64) - 2}
    little = tmp_path / "little.pt"
    torch_format.save_zip(little, values, archive_name="archive")
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(little) as source, zipfile.ZipFile(big, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "archive/byteorder":
                data = b"big"
            elif info.filename == "archive/data/0":
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            elif info.filename == "archive/data/1":
                data = np.frombuffer(data, "<i8").astype(">i8").tobytes()
            target.writestr(info.filename, data)
    read = torch_format.load(big, lazy=False)
    for key, expected in values.items():
        np.testing.assert_array_equal(read[key], expected)


# -------------------------------------------------------------------------------------- broken files
def test_truncated_corrupt_and_foreign_files_are_named(tmp_path):
    path = tmp_path / "good.pt"
    torch_format.save_zip(path, {"w": np.arange(16, dtype=np.float32)}, archive_name="archive")
    data = path.read_bytes()

    with zipfile.ZipFile(path) as archive:
        offset = torch_format._zip_data_offset(str(path), archive.getinfo("archive/data/0"))  # pylint: disable=protected-access
    corrupt = bytearray(data)
    corrupt[offset + 3] ^= 0xFF
    (tmp_path / "corrupt.pt").write_bytes(bytes(corrupt))
    state = torch_format.load(tmp_path / "corrupt.pt")
    with pytest.raises(torch_format.TorchCheckpointError, match=r"corrupt\.pt: storage '0' fails its CRC"):
        np.asarray(state["w"])

    short = tmp_path / "short.pt"
    with zipfile.ZipFile(short, "w") as archive:
        with zipfile.ZipFile(path) as source:
            archive.writestr("archive/data.pkl", source.read("archive/data.pkl"))
        archive.writestr("archive/data/0", b"\0" * 60)
    with pytest.raises(torch_format.TorchCheckpointError, match=r"'archive/data/0' holds 60 bytes; storage '0' needs"):
        torch_format.load(short)

    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(torch_format.TorchCheckpointError, match=r"text\.pt: not a PyTorch checkpoint"):
        torch_format.load(tmp_path / "text.pt")

    script = tmp_path / "script.pt"
    with zipfile.ZipFile(script, "w") as archive:
        archive.writestr("model/constants.pkl", b"")
        archive.writestr("model/code/__torch__.py", b"")
    with pytest.raises(torch_format.TorchCheckpointError, match="TorchScript"):
        torch_format.load(script)

    legacy = open(LEGACY_FP16, "rb").read()
    (tmp_path / "legacy_cut.pt").write_bytes(legacy[:len(legacy) - 100])
    with pytest.raises(torch_format.TorchCheckpointError, match=r"legacy_cut\.pt: truncated inside storage"):
        torch_format.load(tmp_path / "legacy_cut.pt")

    with pytest.raises(FileNotFoundError):
        torch_format.load(tmp_path / "absent.pt")


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    writer = torch_format._PickleWriter()  # pylint: disable=protected-access
    writer.empty_ordered_dict()
    writer.out.write(pickle.MARK)
    writer.string("w")
    writer.tensor("FloatStorage", "0", 4, 2, (2, 2), (2, 1))  # needs elements [2, 6) of 4
    writer.out.write(pickle.SETITEMS + pickle.STOP)
    path = tmp_path / "overrun.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", writer.out.getvalue())
        archive.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
    with pytest.raises(torch_format.TorchCheckpointError, match="reaches past the storage's 4 elements"):
        torch_format.load(path)


def test_writer_streams_arrays_made_on_the_fly_into_distinct_storages(tmp_path):
    """Arrays created and dropped one at a time may reuse a freed array's id: each still gets its own storage."""
    def tensors():
        for index in range(20):
            yield f"t{index}", np.full((index + 1, 3), index, np.float32)  # dropped by the writer after use

    path = tmp_path / "streamed.pt"
    torch_format.save_zip(path, tensors())
    read = torch_format.load(path, lazy=False)
    assert len({value.storage_key for value in torch_format.load(path).values()}) == 20
    for index in range(20):
        np.testing.assert_array_equal(read[f"t{index}"], np.full((index + 1, 3), index, np.float32))


# ------------------------------------------------------------------- crafted legacy files (PyTorch ≤ 1.5)
class _FakeTensor:
    """Pickles as torch does: _rebuild_tensor_v2(storage id, offset, size, stride, requires_grad, hooks)."""

    def __init__(self, rebuild, storage_id, offset, size, stride):
        self.args = (storage_id, offset, size, stride, False, OrderedDict())
        self.rebuild = rebuild

    def __reduce__(self):
        return (self.rebuild, self.args)


def _write_legacy(path, tensors, storages, little_endian=True):
    """A legacy-layout file written with the standard pickle module, independently of the module's writer.

    ``tensors``: key → (storage key, offset, size, stride, view) with view None or (view key, offset, size);
    ``storages``: key → float32 array. Stand-in ``torch`` / ``torch._utils`` modules give pickle the names.
    """
    import sys
    import types

    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: only pickled")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    fake_torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    fake_torch._utils = fake_utils
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules.update({"torch": fake_torch, "torch._utils": fake_utils})
    try:
        class _Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, tuple) and obj and obj[0] == "STORAGE":
                    _, key, view = obj
                    return ("storage", fake_torch.FloatStorage, key, "cpu", storages[key].size, view)
                return None

        byte_order = "<" if little_endian else ">"
        with open(path, "wb") as handle:
            for header in (torch_format.MAGIC_NUMBER, torch_format.PROTOCOL_VERSION,
                           {"protocol_version": 1001, "little_endian": little_endian,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, handle, protocol=2)
            state = OrderedDict((key, _FakeTensor(_rebuild_tensor_v2, ("STORAGE", storage, view), offset, size, stride))
                                for key, (storage, offset, size, stride, view) in tensors.items())
            _Pickler(handle, protocol=2).dump(state)
            pickle.dump(list(storages), handle, protocol=2)
            for values in storages.values():
                handle.write(struct.pack(byte_order + "q", values.size))
                handle.write(values.astype(byte_order + "f4").tobytes())
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.mark.parametrize("little_endian", [True, False])
def test_crafted_legacy_file_with_strides_views_and_shared_storage(tmp_path, little_endian):
    root = np.arange(24, dtype=np.float32) / 8
    other = np.arange(5, dtype=np.float32) - 2
    tensors = {
            "a": ("r", 0, (2, 3), (3, 1), None),
            "a_tied": ("r", 0, (2, 3), (3, 1), None),
            "a_t": ("r", 6, (3, 2), (1, 3), None),             # non-contiguous
            "view": ("r", 0, (3, 4), (4, 1), ("v", 12, 12)),    # a storage view of r: r[12:24]
            "view_strided": ("r", 2, (2,), (5,), ("v", 12, 12)),  # v[2], v[7]
            "other": ("o", 1, (3,), (1,), None),
    }
    path = tmp_path / "legacy.pt"
    _write_legacy(path, tensors, {"r": root, "o": other}, little_endian)
    lazy = torch_format.load(path)
    assert lazy["a_tied"].same_data(lazy["a"]) and not lazy["a_t"].is_contiguous()
    assert lazy["view_strided"].storage_key == lazy["view"].storage_key == "v"
    for state in (lazy, torch_format.load(path, lazy=False)):
        np.testing.assert_array_equal(np.asarray(state["a"]), root[:6].reshape(2, 3))
        np.testing.assert_array_equal(np.asarray(state["a_t"]), root[6:12].reshape(2, 3).T)
        np.testing.assert_array_equal(np.asarray(state["view"]), root[12:].reshape(3, 4))
        np.testing.assert_array_equal(np.asarray(state["view_strided"]), root[[14, 19]])
        np.testing.assert_array_equal(np.asarray(state["other"]), other[1:4])


def test_malformed_pickles_are_named_as_corrupt(tmp_path):
    good = tmp_path / "good.pt"
    torch_format.save_zip(good, {"w": np.arange(4, dtype=np.float32)}, archive_name="archive")
    with zipfile.ZipFile(good) as archive:
        data_pkl = archive.read("archive/data.pkl")
    cases = {
            "cut.pt": data_pkl[:30],                                     # ends inside the pickle
            "call_storage.pt": b"\x80\x02ctorch\nFloatStorage\n)R.",     # calls a storage type
            "bad_args.pt": b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.",  # OrderedDict(1)
    }
    for name, payload in cases.items():
        _zip_with_pickle(tmp_path / name, payload)
        with pytest.raises(torch_format.TorchCheckpointError, match=rf"{name}: corrupt data\.pkl"):
            torch_format.load(tmp_path / name)
