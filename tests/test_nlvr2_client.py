"""The NLVR2 client side without a server (fast): request building, REST JSON conversion, CLI argument errors.

The served round trips are tests/test_nlvr2_serving.py (slow).
"""

import numpy as np
import pytest

from serving import client as client_lib


class _OfflineClient(client_lib.UniterRestClient):
    """Builds requests without a server: the feature width is given, predict is never called."""

    def feature_dim(self):
        return 5


def _image(count, seed, positions=False):
    rng = np.random.default_rng(seed)
    image = {"region_features": rng.standard_normal((count, 5)).astype(np.float32)}
    if positions:
        image["region_positions"] = rng.uniform(0, 1, (count, 7)).astype(np.float32)
    else:
        image["region_boxes"] = rng.uniform(0, 100, (count, 4)).astype(np.float32)
        image["image_size"] = (100, 120)
    return image


def test_pair_inputs_append_the_right_image_with_suffix_2():
    signature, inputs = _OfflineClient()._pair_inputs(["a", "b"], _image(3, 0), _image(2, 1))
    assert signature == "serving_default"
    assert sorted(inputs) == ["image_size", "image_size_2", "num_regions", "num_regions_2", "region_boxes",
                              "region_boxes_2", "region_features", "region_features_2", "text"]
    # One image for two statements is repeated for each.
    assert inputs["region_features"].shape == (2, 3, 5) and inputs["region_features_2"].shape == (2, 2, 5)
    assert inputs["num_regions"].tolist() == [3, 3] and inputs["num_regions_2"].tolist() == [2, 2]
    signature, inputs = _OfflineClient()._pair_inputs(["a"], _image(3, 0, True), _image(2, 1, True))
    assert signature == "score_positions" and inputs["region_positions_2"].shape == (1, 2, 7)


def test_mixed_or_missing_image_forms_are_refused_before_sending():
    client = _OfflineClient()
    with pytest.raises(ValueError, match="give both images as pixel boxes with image_size, or both as region_positions"):
        client._pair_inputs(["a"], _image(3, 0), _image(2, 1, positions=True))
    with pytest.raises(ValueError, match="the right image needs region_features"):
        client._pair_inputs(["a"], _image(3, 0), {"region_boxes": np.zeros((1, 4))})
    with pytest.raises(ValueError, match="statement 1 is empty"):
        client.nlvr2(["a", "  "], _image(3, 0), _image(2, 1))


def test_rest_json_round_trip_keeps_strings_numbers_and_bytes():
    strings = np.array([b"True", "caf\u00e9".encode("utf-8"), b"\xff\x00"], dtype=object)
    encoded = client_lib._to_json(strings)
    assert encoded[:2] == ["True", "caf\u00e9"] and set(encoded[2]) == {"b64"}
    assert client_lib._from_json(encoded).tolist() == strings.tolist()
    numbers = client_lib._from_json([[0.25, 1.5], [2.0, -1.0]])
    assert numbers.dtype == np.float32 and numbers.shape == (2, 2)
    assert client_lib._from_json([1, 2]).dtype.kind == "i"


def test_query_nlvr2_needs_the_second_image(tmp_path, capsys):
    from uniter_tf import cli

    regions = tmp_path / "left.npz"
    np.savez(regions, **{key: np.asarray(value) for key, value in _image(2, 0).items()})
    # Refused before any call: no server listens at this target.
    assert cli.main(["query", "--target", "127.0.0.1:9", "--task", "nlvr2", "--regions", str(regions),
                     "--text", "The left image has more shapes."]) == 2
    assert "--task nlvr2 needs the right image too" in capsys.readouterr().err
    assert cli.main(["query", "--target", "127.0.0.1:9", "--regions", str(regions), "--regions-2", str(regions),
                     "--text", "a dog"]) == 2
    assert "--image-2 / --regions-2 are for --task nlvr2" in capsys.readouterr().err
