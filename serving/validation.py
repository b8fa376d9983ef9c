"""Checks a request's inputs against a signature before anything runs.

Each check names the signature and the input, and states what was expected and what arrived, so that
a client can fix its request from the message alone.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

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
    check_input_names(signature, inputs)
    batch_sizes = {}
    for name, spec in signature.inputs.items():
        array = inputs[name]
        check_declared(signature.name, spec, array.dtype, array.shape)
        if array.ndim:
            batch_sizes[name] = array.shape[0]
    if len(set(batch_sizes.values())) > 1:
        raise invalid_argument(
                f"signature '{signature.name}': inputs disagree on the batch size (dimension 0): "
                + ", ".join(f"{name}={size}" for name, size in sorted(batch_sizes.items())))
    return dict(inputs)


def check_input_names(signature: Signature, names: Iterable[str]) -> None:
    """Checks that ``names`` are exactly the signature's inputs.

    Raises:
        ServingError: INVALID_ARGUMENT naming the unknown or missing inputs.
    """
    expected = signature.inputs
    names = set(names)
    unknown = sorted(names - set(expected))
    if unknown:
        raise invalid_argument(
                f"signature '{signature.name}' has no input {_quoted(unknown)}; it takes "
                f"{_describe_all(expected)}")
    missing = sorted(set(expected) - names)
    if missing:
        raise invalid_argument(
                f"signature '{signature.name}' is missing input {_quoted(missing)}; it takes "
                f"{_describe_all(expected)}")


def check_declared(signature_name: str, spec: InputSpec, dtype: np.dtype, shape: Sequence[int]) -> None:
    """Checks a dtype and a shape against an input's spec, before or after the data exists.

    The gRPC front end calls this with the dtype and shape a ``TensorProto`` *declares*, so that a
    request is refused before anything of its declared size is allocated.

    Raises:
        ServingError: INVALID_ARGUMENT naming the signature and the input.
    """
    _check_dtype(signature_name, spec, np.dtype(dtype))
    _check_shape(signature_name, spec, tuple(shape))


def _check_dtype(signature_name: str, spec: InputSpec, dtype: np.dtype) -> None:
    is_string = spec.dtype == np.dtype(object)
    got_string = dtype == np.dtype(object) or dtype.kind in ("S", "U")
    if is_string != got_string or (not is_string and dtype != spec.dtype):
        got = "string" if got_string else dtype.name
        raise invalid_argument(
                f"signature '{signature_name}': input '{spec.name}' expects {spec.describe()}, got dtype {got}")


def _check_shape(signature_name: str, spec: InputSpec, shape: Tuple[int, ...]) -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        # A rank-70 shape is not worth printing in full.
        shown = list(shape) if len(shape) <= 8 else f"[{', '.join(map(str, shape[:8]))}, ...]"
        raise invalid_argument(
                f"signature '{signature_name}': input '{spec.name}' expects rank {len(spec.shape)} "
                f"({spec.describe()}), got rank {len(shape)} with shape {shown}")
    for axis, (want, got) in enumerate(zip(spec.shape, shape)):
        if want is not None and want != got:
            raise invalid_argument(
                    f"signature '{signature_name}': input '{spec.name}' expects size {want} in dimension "
                    f"{axis} ({spec.describe()}), got shape {list(shape)}")


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
