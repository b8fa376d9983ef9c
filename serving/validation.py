"""Checks a request's inputs against a signature before anything runs.

Each check names the signature and the input, and states what was expected and what arrived, so that
a client can fix its request from the message alone.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from serving.errors import invalid_argument
from serving.model_manager import InputSpec, Signature


def validate_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Checks names, dtypes, ranks and fixed dimensions of ``inputs``.

    Args:
        signature: the signature the request targets.
        inputs: numpy arrays by input name.

    Returns:
        The inputs (unchanged) as a plain dict.

    Raises:
        ServingError: INVALID_ARGUMENT naming the first input that does not fit.
    """
    expected = signature.inputs
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise invalid_argument(
                f"signature '{signature.name}' has no input {_quoted(unknown)}; it takes "
                f"{_describe_all(expected)}")
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise invalid_argument(
                f"signature '{signature.name}' is missing input {_quoted(missing)}; it takes "
                f"{_describe_all(expected)}")
    batch_sizes = {}
    for name, spec in expected.items():
        array = inputs[name]
        _check_dtype(signature.name, spec, array)
        _check_shape(signature.name, spec, array)
        if array.ndim:
            batch_sizes[name] = array.shape[0]
    if len(set(batch_sizes.values())) > 1:
        raise invalid_argument(
                f"signature '{signature.name}': inputs disagree on the batch size (dimension 0): "
                + ", ".join(f"{name}={size}" for name, size in sorted(batch_sizes.items())))
    return dict(inputs)


def _check_dtype(signature_name: str, spec: InputSpec, array: np.ndarray) -> None:
    is_string = spec.dtype == np.dtype(object)
    got_string = array.dtype == np.dtype(object) or array.dtype.kind in ("S", "U")
    if is_string != got_string or (not is_string and array.dtype != spec.dtype):
        got = "string" if got_string else array.dtype.name
        raise invalid_argument(
                f"signature '{signature_name}': input '{spec.name}' expects {spec.describe()}, got dtype {got}")


def _check_shape(signature_name: str, spec: InputSpec, array: np.ndarray) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise invalid_argument(
                f"signature '{signature_name}': input '{spec.name}' expects rank {len(spec.shape)} "
                f"({spec.describe()}), got rank {array.ndim} with shape {list(array.shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if want is not None and want != got:
            raise invalid_argument(
                    f"signature '{signature_name}': input '{spec.name}' expects size {want} in dimension "
                    f"{axis} ({spec.describe()}), got shape {list(array.shape)}")


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _describe_all(specs: Mapping[str, InputSpec]) -> str:
    return ", ".join(f"{name}: {spec.describe()}" for name, spec in sorted(specs.items()))


def select_outputs(signature: Signature, outputs: Mapping[str, np.ndarray],
                   output_filter: Optional[Sequence[str]]) -> Dict[str, np.ndarray]:
    """Keeps the outputs a request's ``output_filter`` names (all when empty).

    Raises:
        ServingError: INVALID_ARGUMENT for a name that is not an output of the signature.
    """
    if not output_filter:
        return dict(outputs)
    unknown = sorted(set(output_filter) - set(outputs))
    if unknown:
        raise invalid_argument(
                f"output_filter names {_quoted(unknown)}, which signature '{signature.name}' does not "
                f"produce; its outputs are {sorted(outputs)}")
    return {name: outputs[name] for name in output_filter}
