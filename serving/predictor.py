"""The protocol-neutral core: resolve model/version/signature, validate, (batch,) run, answer.

Both front ends (gRPC in :mod:`serving.server`, REST in :mod:`serving.rest`) decode their request
into numpy arrays, call :meth:`Predictor.predict`, and encode the result; every failure is a
:class:`~serving.errors.ServingError` with a canonical code.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from serving import tensor_codec
from serving.batching import BatchingOptions, BatchScheduler
from serving.errors import Code, ServingError, from_tf_error, invalid_argument
from serving.model_manager import (ModelManager, ServableVersion, Signature, parse_version, require_models,
                                   warm_from_records)
from serving.validation import check_declared, check_input_names, select_outputs, validate_inputs

_LOG = logging.getLogger(__name__)

# The decoded size of one request's tensors: the gRPC front end's default message limit, so that a
# request never expands (by broadcasting a single value) beyond what it could have sent in full.
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024


def run_signature(signature: Signature, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Calls a loaded signature on numpy inputs and returns numpy outputs.

    Raises:
        ServingError: the TensorFlow error's code (INVALID_ARGUMENT for a failed in-graph check).
    """
    import tensorflow as tf

    try:
        tensors = {name: tf.constant(array, dtype=tf.string if array.dtype == np.dtype(object) else None)
                   for name, array in inputs.items()}
        function = signature.function
        if signature.flat_order is not None:
            # The inputs were validated against the signature's specs, so skip the keyword binding
            # and spec re-check of the structured call (flat_argument_order says why).
            outputs = function._call_flat([tensors[name] for name in signature.flat_order],
                                          function.captured_inputs)
        else:
            outputs = function(**tensors)
    except tf.errors.OpError as error:
        raise from_tf_error(error) from None
    except (TypeError, ValueError) as error:  # an argument the concrete function refused
        raise invalid_argument(f"signature '{signature.name}': {error}") from None
    if not isinstance(outputs, dict):
        outputs = {"output_0": outputs}
    return {name: tensor.numpy() for name, tensor in outputs.items()}


class Predictor:
    """Answers Predict / GetModelMetadata / GetModelStatus for the models it manages.

    Args:
        managers: the model managers by model name.
        batching: batching parameters, or ``None`` to run every request on its own.
        max_request_bytes: the most bytes the tensors of one gRPC request (or warm-up record) may
            decode to. A ``TensorProto`` with one value broadcasts to its whole declared shape, so the
            declared size is checked against this before anything is allocated.
    """

    def __init__(self, managers: Dict[str, ModelManager], batching: Optional[BatchingOptions] = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.managers = managers
        self.batcher = BatchScheduler(batching) if batching is not None else None
        self.max_request_bytes = int(max_request_bytes)

    def close(self) -> None:
        """Stops the batching threads (the managers are stopped by their owner)."""
        if self.batcher is not None:
            self.batcher.close()

    def predict(self, model_name: str, version=None, version_label: str = "", signature_name: str = "",
                inputs: Optional[Mapping[str, np.ndarray]] = None,
                output_filter: Optional[Sequence[str]] = None,
                input_decoder: Optional[Callable[[Signature], Mapping[str, np.ndarray]]] = None,
                ) -> Tuple[int, str, Dict[str, np.ndarray]]:
        """Runs one request.

        Args:
            model_name: the model.
            version: a version number, or ``None``/empty for the newest.
            version_label: a version label; labels are not configured, so a non-empty one is refused.
            signature_name: the signature; empty means ``serving_default``.
            inputs: numpy arrays by input name.
            output_filter: output names to return (all when empty).
            input_decoder: instead of ``inputs``, builds them from the resolved signature (REST's
                JSON needs the signature's dtypes to be decoded).

        Returns:
            ``(version used, signature name used, outputs)``.
        """
        manager = require_models(self.managers, model_name)
        if version_label:
            raise invalid_argument(f"version label '{version_label}' is not configured for model "
                                   f"'{model_name}'; request a version number or the latest version")
        with manager.acquire(parse_version(version)) as servable:
            signature = servable.signature(signature_name)
            if input_decoder is not None:
                inputs = input_decoder(signature)
            checked = validate_inputs(signature, inputs or {})
            if self.batcher is not None:
                outputs = self.batcher.run((servable, signature.name), checked,
                                           lambda merged: run_signature(signature, merged))
            else:
                outputs = run_signature(signature, checked)
            return servable.version, signature.name, select_outputs(signature, outputs, output_filter)

    def predict_proto(self, request) -> "object":
        """Answers a ``tensorflow.serving.PredictRequest`` with a ``PredictResponse``."""
        from tensorflow_serving.apis import predict_pb2

        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        used_version, used_signature, outputs = self.predict(
                spec.name, version, spec.version_label, spec.signature_name,
                output_filter=list(request.output_filter),
                input_decoder=lambda signature: self.decode_protos(signature, request.inputs))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = used_version
        response.model_spec.signature_name = used_signature
        for name, array in outputs.items():
            tensor_codec.from_ndarray(array, response.outputs[name])
        return response

    def decode_protos(self, signature: Signature, protos: Mapping[str, object]) -> Dict[str, np.ndarray]:
        """Decodes a request's ``TensorProto`` inputs for ``signature``, checking first what they declare.

        Names, dtypes, ranks, fixed dimensions and the total decoded size are checked from the
        protos' headers, so that a small request declaring a huge (or absurd) shape is refused
        before anything of that size exists.

        Raises:
            ServingError: INVALID_ARGUMENT naming the input.
        """
        check_input_names(signature, protos.keys())
        for name, proto in protos.items():
            try:
                dtype = tensor_codec.proto_dtype(proto)
            except ServingError as error:
                raise invalid_argument(f"signature '{signature.name}': input '{name}': {error.message}") from None
            # The signature's rank and fixed sizes first (the clearest message), then what numpy can hold.
            check_declared(signature.name, signature.inputs[name], dtype, tensor_codec.proto_shape(proto))
            tensor_codec.declared_shape(proto, name)
        tensor_codec.check_request_size(protos, self.max_request_bytes)
        return {name: tensor_codec.to_ndarray(proto, name) for name, proto in protos.items()}

    def metadata(self, model_name: str, version=None, version_label: str = "") -> Tuple[int, Dict[str, object]]:
        """Returns ``(version, {signature name: SignatureDef})`` for GetModelMetadata."""
        manager = require_models(self.managers, model_name)
        if version_label:
            raise invalid_argument(f"version label '{version_label}' is not configured for model '{model_name}'")
        with manager.acquire(parse_version(version)) as servable:
            return servable.version, dict(servable.signature_def_map)

    def metadata_proto(self, request):
        """Answers a ``GetModelMetadataRequest``."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise invalid_argument(f"metadata_field must be exactly ['signature_def'], got {fields}")
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        used_version, signature_defs = self.metadata(spec.name, version, spec.version_label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = used_version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def status(self, model_name: str, version=None, version_label: str = "") -> List[Tuple[int, str, Code, str]]:
        """Returns ``(version, state, error_code, error_message)`` rows for GetModelStatus."""
        manager = require_models(self.managers, model_name)
        if version_label:
            raise invalid_argument(f"version label '{version_label}' is not configured for model '{model_name}'")
        return manager.status(parse_version(version))

    def status_proto(self, request):
        """Answers a ``GetModelStatusRequest``."""
        from tensorflow_serving.apis import get_model_status_pb2

        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state, code, message in self.status(spec.name, version, spec.version_label):
            status = response.model_version_status.add()
            status.version = number
            status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
            status.status.error_code = int(code)
            status.status.error_message = message
        return response

    def warmup(self, servable: ServableVersion) -> None:
        """Replays the version's ``assets.extra/tf_serving_warmup_requests`` before it is routed to."""

        def replay(version: ServableVersion, request) -> None:
            signature = version.signature(request.model_spec.signature_name)
            run_signature(signature, validate_inputs(signature, self.decode_protos(signature, request.inputs)))

        count = warm_from_records(servable, replay)
        if count:
            _LOG.info("Warmed up %s version %d with %d requests", servable.model_name, servable.version, count)

