"""A small Python client for UNITER models behind TF Serving (or ``uniter serve``).

It speaks the official ``tensorflow.serving.PredictionService`` through ``PredictionServiceStub``, so
it works against ``tensorflow_model_server`` too. Typical use::

    client = UniterClient("127.0.0.1:8500")
    client.score(["a dog on the grass"], region_features, region_boxes=boxes, image_size=(480, 640))
    client.answer(["what animal is it?"], region_features, region_boxes=boxes, image_size=(480, 640))
    client.score_image("dog.jpg", ["a dog on the grass", "a red car"])   # detector runs locally

Region inputs are accepted per image (``[n, D]``) or batched (``[B, N, D]``); one image with several
texts is repeated for each text. gRPC's Python default caps messages at 4 MiB (about five images of
100 x 2048 float32 features), so the channel is opened with larger limits.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from serving import tensor_codec

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024

ArrayOrList = Union[np.ndarray, Sequence[np.ndarray]]


class ServingRequestError(RuntimeError):
    """A request failed on the server; ``code`` is the gRPC status name (e.g. ``INVALID_ARGUMENT``)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _stack_regions(values: ArrayOrList, name: str, width: int, dtype=np.float32) -> Tuple[np.ndarray, np.ndarray]:
    """Per-image ``[n_i, width]`` arrays (or one ``[B, N, width]`` array) -> ``([B, N, width], counts)``."""
    if isinstance(values, np.ndarray) and values.ndim == 3:
        if values.shape[2] != width:
            raise ValueError(f"{name} must have {width} columns, got shape {list(values.shape)}")
        return values.astype(dtype, copy=False), np.full((values.shape[0],), values.shape[1], np.int32)
    if isinstance(values, np.ndarray) and values.ndim == 2:
        values = [values]
    rows = [np.asarray(value, dtype=dtype) for value in values]
    for index, row in enumerate(rows):
        if row.ndim != 2 or row.shape[1] != width:
            raise ValueError(f"{name}[{index}] must have shape [n, {width}], got {list(row.shape)}")
    longest = max((row.shape[0] for row in rows), default=0)
    stacked = np.zeros((len(rows), longest, width), dtype)
    for index, row in enumerate(rows):
        stacked[index, :row.shape[0]] = row
    return stacked, np.array([row.shape[0] for row in rows], np.int32)


def _repeat_to(array: np.ndarray, batch_size: int, name: str) -> np.ndarray:
    if array.shape[0] == batch_size:
        return array
    if array.shape[0] == 1:
        return np.repeat(array, batch_size, axis=0)
    raise ValueError(f"{name} has {array.shape[0]} images for {batch_size} texts; give one image or one per text")


class UniterClient:
    """Calls the exported UNITER signatures over gRPC.

    Args:
        target: ``host:port`` of the gRPC endpoint.
        model_name: the served model's name.
        version: a fixed version, or ``None`` for the newest.
        timeout_s: deadline of each call.
        max_message_bytes: the channel's send/receive limits.
    """

    def __init__(self, target: str = "127.0.0.1:8500", model_name: str = "uniter", version: Optional[int] = None,
                 timeout_s: float = 30.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.target = target
        self.model_name = model_name
        self.version = version
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target, options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._feature_dim: Optional[int] = None
        self.last_version: Optional[int] = None

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> "UniterClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --------------------------------------------------------------------------------- protocol

    def _model_spec(self, spec, signature_name: str = "") -> None:
        spec.name = self.model_name
        spec.signature_name = signature_name
        if self.version is not None:
            spec.version.value = int(self.version)

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = "",
                output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        """One ``Predict`` call with numpy inputs; returns numpy outputs.

        Raises:
            ServingRequestError: the server's status code and message.
        """
        import grpc
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for name, array in inputs.items():
            tensor_codec.from_ndarray(np.asarray(array), request.inputs[name])
        request.output_filter.extend(output_filter)
        try:
            response = self._stub.Predict(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise ServingRequestError(error.code().name, error.details()) from None
        self.last_version = response.model_spec.version.value
        return {name: tensor_codec.to_ndarray(proto, name) for name, proto in response.outputs.items()}

    def signature_defs(self) -> Dict[str, object]:
        """The served version's ``SignatureDef`` protos by name (GetModelMetadata)."""
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        try:
            response = self._stub.GetModelMetadata(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise ServingRequestError(error.code().name, error.details()) from None
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def feature_dim(self) -> int:
        """D of ``region_features``, read once from the served ``serving_default`` signature."""
        if self._feature_dim is None:
            signature = self.signature_defs()["serving_default"]
            self._feature_dim = int(signature.inputs["region_features"].tensor_shape.dim[2].size)
        return self._feature_dim

    # ------------------------------------------------------------------------------- UNITER calls

    def _image_text_inputs(self, texts: Sequence[str], region_features: ArrayOrList,
                           region_boxes: Optional[ArrayOrList], image_size, region_positions: Optional[ArrayOrList],
                           ) -> Tuple[str, Dict[str, np.ndarray]]:
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty")
        features, counts = _stack_regions(region_features, "region_features", self.feature_dim())
        batch_size = len(texts)
        features = _repeat_to(features, batch_size, "region_features")
        counts = _repeat_to(counts, batch_size, "region_features")
        text = np.array([item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in texts],
                        dtype=object)
        if region_positions is not None:
            positions, _ = _stack_regions(region_positions, "region_positions", 7)
            return "score_positions", {"text": text, "region_features": features,
                                       "region_positions": _repeat_to(positions, batch_size, "region_positions"),
                                       "num_regions": counts}
        if region_boxes is None or image_size is None:
            raise ValueError("give region_boxes with image_size, or region_positions")
        boxes, _ = _stack_regions(region_boxes, "region_boxes", 4)
        sizes = np.asarray(image_size, np.float32).reshape(-1, 2)
        return "serving_default", {"text": text, "region_features": features,
                                   "region_boxes": _repeat_to(boxes, batch_size, "region_boxes"),
                                   "image_size": _repeat_to(sizes, batch_size, "image_size"), "num_regions": counts}

    def score(self, texts: Sequence[str], region_features: ArrayOrList, region_boxes: Optional[ArrayOrList] = None,
              image_size=None, region_positions: Optional[ArrayOrList] = None) -> np.ndarray:
        """Image-text match probabilities ``[B]`` (ITM, class 1).

        Args:
            texts: captions (one per image, or several for one image).
            region_features: ``[n, D]`` per image, a list of them, or ``[B, N, D]``.
            region_boxes: pixel ``x1, y1, x2, y2`` boxes in the same layouts, with ``image_size``.
            image_size: ``(height, width)`` or one per image.
            region_positions: instead of boxes, the 7-d normalised positions.
        """
        signature, inputs = self._image_text_inputs(texts, region_features, region_boxes, image_size,
                                                    region_positions)
        return self.predict(inputs, signature, output_filter=["itm_score"])["itm_score"]

    def embed(self, texts: Sequence[str], region_features: ArrayOrList, region_boxes: Optional[ArrayOrList] = None,
              image_size=None, region_positions: Optional[ArrayOrList] = None) -> np.ndarray:
        """The pooled joint embeddings ``[B, H]``."""
        signature, inputs = self._image_text_inputs(texts, region_features, region_boxes, image_size,
                                                    region_positions)
        return self.predict(inputs, signature, output_filter=["pooled_output"])["pooled_output"]

    def answer(self, questions: Sequence[str], region_features: ArrayOrList,
               region_boxes: Optional[ArrayOrList] = None, image_size=None,
               region_positions: Optional[ArrayOrList] = None) -> List[List[Tuple[str, float]]]:
        """VQA: the top-k ``(answer, score)`` of each question (needs a model exported with a task head).

        Raises:
            ServingRequestError: INVALID_ARGUMENT when the served model has no ``answers`` output.
        """
        signature, inputs = self._image_text_inputs(questions, region_features, region_boxes, image_size,
                                                    region_positions)
        outputs = self.predict(inputs, signature, output_filter=["answers", "answer_scores"])
        return [[(answer.decode("utf-8"), float(score)) for answer, score in zip(row_answers, row_scores)]
                for row_answers, row_scores in zip(outputs["answers"], outputs["answer_scores"])]

    def entail(self, hypotheses: Sequence[str], region_features: ArrayOrList,
               region_boxes: Optional[ArrayOrList] = None, image_size=None,
               region_positions: Optional[ArrayOrList] = None) -> List[Dict[str, float]]:
        """SNLI-VE: the probability of each label (entailment, neutral, contradiction) per hypothesis.

        Needs a model exported from a ``ve`` run (outputs ``labels`` / ``label_scores``, every label
        returned: the export's ``top_k`` is at least 3). The probabilities are per-label sigmoids, as the
        task is trained (they need not sum to 1).

        Raises:
            ValueError: an empty hypothesis (the image alone decides nothing).
            ServingRequestError: INVALID_ARGUMENT when the served model has no ``labels`` output.
        """
        if isinstance(hypotheses, (str, bytes)):
            hypotheses = [hypotheses]
        empty = [index for index, text in enumerate(hypotheses) if not str(text).strip()]
        if empty:
            raise ValueError(f"hypothesis {empty[0]} is empty: SNLI-VE needs a hypothesis text per image")
        signature, inputs = self._image_text_inputs(hypotheses, region_features, region_boxes, image_size,
                                                    region_positions)
        outputs = self.predict(inputs, signature, output_filter=["labels", "label_scores"])
        return [{label.decode("utf-8"): float(score) for label, score in zip(row_labels, row_scores)}
                for row_labels, row_scores in zip(outputs["labels"], outputs["label_scores"])]

    def refer(self, expressions: Sequence[str], region_features: ArrayOrList, region_boxes: ArrayOrList,
              image_size) -> List[Dict[str, object]]:
        """RefCOCO: which region each expression refers to, with every region's score and the box in pixels.

        Needs a model exported from a ``refcoco`` run (outputs ``region_scores`` / ``chosen_region`` /
        ``chosen_box``). Args as :meth:`score` with pixel boxes (the chosen box is one of them).

        Returns:
            Per expression ``{"expression", "region_scores": [n floats, softmax over the image's regions],
            "chosen_region": index, "chosen_box": [x1, y1, x2, y2]}``.

        Raises:
            ValueError: an empty expression.
            ServingRequestError: INVALID_ARGUMENT for an image with zero regions, or a model without the outputs.
        """
        if isinstance(expressions, (str, bytes)):
            expressions = [expressions]
        empty = [index for index, text in enumerate(expressions) if not str(text).strip()]
        if empty:
            raise ValueError(f"expression {empty[0]} is empty: RefCOCO needs an expression per image")
        signature, inputs = self._image_text_inputs(expressions, region_features, region_boxes, image_size, None)
        outputs = self.predict(inputs, signature, output_filter=["region_scores", "chosen_region", "chosen_box"])
        rows = []
        for index, text in enumerate(expressions):
            count = int(inputs["num_regions"][index])
            rows.append({"expression": text if isinstance(text, str) else text.decode("utf-8"),
                         "region_scores": [float(value) for value in outputs["region_scores"][index][:count]],
                         "chosen_region": int(outputs["chosen_region"][index]),
                         "chosen_box": [float(value) for value in outputs["chosen_box"][index]]})
        return rows

    def vcr(self, questions: Sequence[str], answers: Sequence, region_features: ArrayOrList,
            region_boxes: ArrayOrList, image_size, rationales: Optional[Sequence] = None) -> List[Dict[str, object]]:
        """VCR: which answer (and, with rationales, which rationale) each question's image supports.

        Needs a model exported from a ``vcr`` run (its signatures take the question, the choices and the
        regions; object references are written ``[i]`` = region ``i``, ground-truth boxes first). Without
        ``rationales`` the ``answer_question`` signature runs (Q→A); with them ``serving_default`` (Q→A, then
        QA→R with the chosen answer).

        Args:
            questions: one question or several.
            answers: per question its choices (for one question, the list of its choices).
            region_features: ``[n, D]`` per image, a list of them, or ``[B, N, D]`` (one image for all questions
                or one per question).
            region_boxes: pixel ``x1, y1, x2, y2`` boxes in the same layouts.
            image_size: ``(height, width)`` or one per image.
            rationales: per question its rationale choices, or None.

        Returns:
            Per question ``{"question", "answer_scores": [C floats], "chosen_answer": index}`` plus, with
            rationales, ``"rationale_scores"`` and ``"chosen_rationale"``. Scores are the head's class-1 logits.

        Raises:
            ValueError: questions and choice lists of different counts, or rows of unequal lengths.
            ServingRequestError: INVALID_ARGUMENT for another number of choices than the model's (naming
                ``answers`` / ``rationales``), an empty choice, a reference to a missing region, zero regions.
        """
        single = isinstance(questions, (str, bytes))
        questions = [questions] if single else list(questions)
        if not questions:
            raise ValueError("questions is empty")

        def choice_array(rows, name):
            rows = [rows] if single else list(rows)
            if len(rows) != len(questions):
                raise ValueError(f"{name}: {len(rows)} choice lists for {len(questions)} questions")
            if len({len(row) for row in rows}) != 1:
                raise ValueError(f"{name}: every question needs the same number of choices, got "
                                 f"{[len(row) for row in rows]}")
            return np.array([[text.encode("utf-8") if isinstance(text, str) else bytes(text) for text in row]
                             for row in rows], dtype=object).reshape(len(rows), -1)

        features, counts = _stack_regions(region_features, "region_features", self.feature_dim())
        boxes, _ = _stack_regions(region_boxes, "region_boxes", 4)
        sizes = np.asarray(image_size, np.float32).reshape(-1, 2)
        batch_size = len(questions)
        inputs = {"question": np.array([text.encode("utf-8") if isinstance(text, str) else bytes(text)
                                        for text in questions], dtype=object),
                  "answers": choice_array(answers, "answers"),
                  "region_features": _repeat_to(features, batch_size, "region_features"),
                  "region_boxes": _repeat_to(boxes, batch_size, "region_boxes"),
                  "image_size": _repeat_to(sizes, batch_size, "image_size"),
                  "num_regions": _repeat_to(counts, batch_size, "region_features")}
        names = ["answer_scores", "chosen_answer"]
        signature = "answer_question"
        if rationales is not None:
            inputs["rationales"] = choice_array(rationales, "rationales")
            names += ["rationale_scores", "chosen_rationale"]
            signature = "serving_default"
        outputs = self.predict(inputs, signature, output_filter=names)
        rows = []
        for index, question in enumerate(questions):
            row = {"question": question if isinstance(question, str) else bytes(question).decode("utf-8"),
                   "answer_scores": [float(value) for value in outputs["answer_scores"][index]],
                   "chosen_answer": int(outputs["chosen_answer"][index])}
            if rationales is not None:
                row["rationale_scores"] = [float(value) for value in outputs["rationale_scores"][index]]
                row["chosen_rationale"] = int(outputs["chosen_rationale"][index])
            rows.append(row)
        return rows

    def nlvr2(self, statements: Sequence[str], left: Mapping[str, object], right: Mapping[str, object]
              ) -> List[Dict[str, object]]:
        """NLVR2: is each statement true of the pair of images (left, right)?

        Needs a model exported from an ``nlvr2`` run (its signatures take the right image as the
        ``*_2`` inputs). Each image is a mapping with ``region_features`` and either ``region_boxes``
        (pixels) with ``image_size`` (height, width) or ``region_positions`` (7-d); values in the layouts
        of :meth:`score` (one image for every statement, or one per statement). Both images must use the
        same form (boxes or positions).

        Returns:
            Per statement ``{"statement", "label": "True" | "False", "p_true": float, "logits": [2 floats]}``.

        Raises:
            ValueError: an empty statement, or an image without ``region_features`` or in another form than
                the other image.
            ServingRequestError: INVALID_ARGUMENT for an image with zero regions or a model without the
                pair inputs (a one-image export names the unknown ``*_2`` inputs).
        """
        if isinstance(statements, (str, bytes)):
            statements = [statements]
        statements = [text if isinstance(text, str) else bytes(text).decode("utf-8") for text in statements]
        empty = [index for index, text in enumerate(statements) if not text.strip()]
        if empty:
            raise ValueError(f"statement {empty[0]} is empty: NLVR2 needs a statement about the two images")
        signature, inputs = self._pair_inputs(statements, left, right)
        outputs = self.predict(inputs, signature, output_filter=["label", "p_true", "task_logits"])
        return [{"statement": text, "label": label.decode("utf-8"), "p_true": float(p_true),
                 "logits": [float(value) for value in logits]}
                for text, label, p_true, logits in zip(statements, outputs["label"], outputs["p_true"],
                                                        outputs["task_logits"])]

    def _pair_inputs(self, texts: Sequence[str], left: Mapping[str, object], right: Mapping[str, object]
                     ) -> Tuple[str, Dict[str, np.ndarray]]:
        """The inputs of a pair signature: the left image's one-image inputs plus the right image's with ``_2``."""
        images = []
        for side, image in (("left", left), ("right", right)):
            if not isinstance(image, Mapping) or image.get("region_features") is None:
                raise ValueError(f"the {side} image needs region_features (and region_boxes with image_size, or "
                                 f"region_positions); got {sorted(image) if isinstance(image, Mapping) else image!r}")
            images.append(self._image_text_inputs(texts, image["region_features"], image.get("region_boxes"),
                                                  image.get("image_size"), image.get("region_positions")))
        (signature, inputs), (right_signature, right_inputs) = images
        if signature != right_signature:
            raise ValueError("give both images as pixel boxes with image_size, or both as region_positions "
                             f"(left: {signature}, right: {right_signature})")
        inputs = dict(inputs)
        inputs.update({f"{name}_2": value for name, value in right_inputs.items() if name != "text"})
        return signature, inputs

    def retrieve(self, text: str, k: int = 10, rerank: int = 0) -> List[Dict[str, object]]:
        """Text → the ``k`` best images of the served version's index (signature ``retrieve``, issue 13).

        Args:
            text: the query.
            k: answers (1 ≤ k ≤ the gallery).
            rerank: 0 for the first stage alone, else ``rerank`` ≥ ``k`` candidates rescored by the
                cross-encoder.

        Returns:
            ``[{"rank", "image_id", "score", "first_stage_score", "reranked"}]``, best first; ``last_version``
            says which version (model and index) answered.

        Raises:
            ServingRequestError: INVALID_ARGUMENT naming the input (empty text, k or rerank out of range), or
                NOT_FOUND when the served version has no index.
        """
        outputs = self.predict({"text": np.asarray(text.encode("utf-8"), dtype=object),
                                "k": np.asarray(k, np.int32), "rerank": np.asarray(rerank, np.int32)},
                               signature_name="retrieve")
        ids = [value.decode("utf-8") if isinstance(value, bytes) else str(value)
               for value in np.asarray(outputs["image_ids"]).reshape(-1)]
        scores = np.asarray(outputs["scores"], np.float64).reshape(-1)
        first_stage = np.asarray(outputs["first_stage_scores"], np.float64).reshape(-1)
        return [{"rank": rank + 1, "image_id": image_id, "score": float(scores[rank]),
                 "first_stage_score": float(first_stage[rank]), "reranked": bool(rerank)}
                for rank, image_id in enumerate(ids)]

    def score_examples(self, serialized_examples: Sequence[bytes]) -> Dict[str, np.ndarray]:
        """Scores serialized canonical ``tf.Example`` records (the ``serve_examples`` signature)."""
        return self.predict({"examples": np.array(list(serialized_examples), dtype=object)}, "serve_examples")

    def score_image(self, image, texts: Sequence[str], extractor=None, image_id: str = "query") -> np.ndarray:
        """The one-call path: an image file (or bytes, or ``[H, W, 3]`` array) -> regions -> ITM scores.

        Args:
            image: a path, encoded bytes, or a decoded uint8 RGB array.
            texts: the captions to score against the image.
            extractor: a :class:`uniter_tf.extraction.region_extractor.RegionFeatureExtractor`; by default
                the default detector (SSD-MobileNet-v2). Its feature width must be the model's D.
            image_id: a name for error messages.

        Raises:
            ValueError: when the extractor's feature width differs from the served model's.
        """
        regions = self.extract_regions(image, extractor, image_id)
        return self.score(texts, regions.region_features, region_boxes=regions.region_boxes,
                          image_size=(regions.image_height, regions.image_width))

    def extract_regions(self, image, extractor=None, image_id: str = "query"):
        """Runs the region extractor locally on one image (see :meth:`score_image`)."""
        from uniter_tf.extraction.images import decode_image

        if extractor is None:
            from uniter_tf.extraction.detector import load_detector
            from uniter_tf.extraction.region_extractor import RegionFeatureExtractor

            extractor = RegionFeatureExtractor(load_detector())
        if extractor.feature_dim != self.feature_dim():
            raise ValueError(f"the extractor produces {extractor.feature_dim}-d region features but model "
                             f"'{self.model_name}' expects {self.feature_dim()}-d ones; use the detector the "
                             f"model was trained with")
        if isinstance(image, np.ndarray):
            pixels = image
        else:
            if isinstance(image, (bytes, bytearray)):
                data = bytes(image)
            else:
                with open(image, "rb") as handle:
                    data = handle.read()
                image_id = str(image)
            pixels = decode_image(data, source=image_id)
        return extractor.extract(pixels, image_id)


class UniterRestClient(UniterClient):
    """:class:`UniterClient` over the REST API (``/v1/models/NAME:predict``, TF Serving's JSON).

    Every call of :class:`UniterClient` (``score``, ``answer``, ``entail``, ``refer``, ``nlvr2``, ...)
    works the same; requests use the columnar ``inputs`` format, strings go as UTF-8 text (``{"b64"}``
    when they are not).

    Args:
        base_url: ``http://host:port`` of the REST endpoint.
        model_name: the served model's name.
        version: a fixed version, or ``None`` for the newest.
        timeout_s: deadline of each call.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8501", model_name: str = "uniter",
                 version: Optional[int] = None, timeout_s: float = 30.0):
        self.target = base_url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout_s = timeout_s
        self._feature_dim = None
        self.last_version = None

    def close(self) -> None:
        """Nothing to close (one HTTP connection per call)."""

    def _url(self, suffix: str) -> str:
        version = f"/versions/{int(self.version)}" if self.version is not None else ""
        return f"{self.target}/v1/models/{self.model_name}{version}{suffix}"

    def _call(self, url: str, body: Optional[dict] = None) -> dict:
        import json
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                message = json.loads(payload).get("error", payload.decode("utf-8", "replace"))
            except ValueError:
                message = payload.decode("utf-8", "replace")
            raise ServingRequestError(_HTTP_CODES.get(error.code, f"HTTP_{error.code}"), message) from None
        except urllib.error.URLError as error:
            raise ServingRequestError("UNAVAILABLE", f"{url}: {error.reason}") from None

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = "",
                output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        """One ``:predict`` call with numpy inputs; returns numpy outputs (strings as bytes).

        Raises:
            ServingRequestError: the status (``INVALID_ARGUMENT`` for HTTP 400, ...) and the server's message.
        """
        body = {"signature_name": signature_name,
                "inputs": {name: _to_json(np.asarray(array)) for name, array in inputs.items()}}
        if output_filter:
            body["output_filter"] = list(output_filter)
        outputs = self._call(self._url(":predict"), body)["outputs"]
        if not isinstance(outputs, dict) or set(outputs) == {"b64"}:
            # TF Serving's REST API unwraps a single output.
            if len(output_filter) != 1:
                raise ServingRequestError("INTERNAL", "the server answered one unnamed output")
            outputs = {output_filter[0]: outputs}
        return {name: _from_json(value) for name, value in outputs.items()}

    def feature_dim(self) -> int:
        """D of ``region_features``, read once from the model's REST metadata."""
        if self._feature_dim is None:
            metadata = self._call(self._url("/metadata"))
            signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
            self._feature_dim = int(signature["inputs"]["region_features"]["tensor_shape"]["dim"][2]["size"])
        return self._feature_dim

    def signature_defs(self) -> Dict[str, object]:
        """The served version's signatures as the REST metadata's JSON (not protos)."""
        return self._call(self._url("/metadata"))["metadata"]["signature_def"]["signature_def"]


_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED",
               500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _to_json(array: np.ndarray):
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        import base64

        def encode(item):
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(data).decode("ascii")}

        return np.asarray([encode(item) for item in array.reshape(-1)], dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _from_json(value) -> np.ndarray:
    import base64

    def leaves(item):
        if isinstance(item, list):
            return [leaves(child) for child in item]
        if isinstance(item, dict) and set(item) == {"b64"}:
            return base64.b64decode(item["b64"])
        return item.encode("utf-8") if isinstance(item, str) else item

    converted = leaves(value)
    array = np.asarray(converted, dtype=object)
    flat = array.reshape(-1)
    if flat.size and all(isinstance(item, bytes) for item in flat):
        return array
    array = np.asarray(converted)
    return array.astype(np.float32) if array.dtype == np.float64 else array
