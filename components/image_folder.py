"""ImageFolder: brings a folder of images into the pipeline as an ``Images`` artifact, fingerprinted.

It replaces ``tfx.dsl.Importer`` for the images: an Importer reuses the artifact it registered for the
same URI, so after the folder's images changed in place the region-feature extraction was served from the
cache. Here a driver (:class:`ImageFolderDriver`) fingerprints the folder's listing (relative names,
sizes and modification times of the files matching ``pattern``, not their bytes: image folders are
large) before the cache lookup; a changed folder is a new execution with a new ``Images`` artifact, so
extraction and everything after it run again. An unchanged folder is a cache hit that hands back the
same artifact.

The artifact points at the folder itself (as the Importer's does; nothing is copied) and carries the
custom properties ``input_fingerprint``, ``num_files`` and ``source_uri``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Union

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.orchestration import data_types
from tfx.types import artifact_utils
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import input_fingerprint
from components.artifacts import Images

SOURCE_URI_KEY = "source_uri"
PATTERN_KEY = "pattern"
BOXES_JSON_KEY = "boxes_json"
IMAGES_KEY = "images"
#: Custom property of the ``Images`` artifact: files matching the pattern at fingerprinting time.
NUM_FILES_PROPERTY = "num_files"


class ImageFolderSpec(ComponentSpec):
    """Parameters: the folder (``source_uri``, may be a runtime parameter), the file ``pattern`` that
    the fingerprint covers, an optional ``boxes_json`` describing the images (content-fingerprinted), and
    ``input_fingerprint`` (set by the driver). Output: ``Images``."""

    PARAMETERS = {
            SOURCE_URI_KEY: ExecutionParameter(type=str),
            PATTERN_KEY: ExecutionParameter(type=str),
            BOXES_JSON_KEY: ExecutionParameter(type=str, optional=True),
            input_fingerprint.FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS: Dict[str, ChannelParameter] = {}
    OUTPUTS = {IMAGES_KEY: ChannelParameter(type=Images)}


def folder_fingerprint(exec_properties: Dict[str, Any]) -> str:
    """The listing fingerprint of the files matching ``pattern`` in ``source_uri`` (+ ``boxes_json``'s content).

    Raises:
        FileNotFoundError: the folder is missing or has no matching file, or ``boxes_json`` is missing.
    """
    source_uri = exec_properties[SOURCE_URI_KEY]
    fingerprint = input_fingerprint.listing_fingerprint([source_uri], exec_properties[PATTERN_KEY])
    if fingerprint.startswith("files:0,"):
        raise FileNotFoundError(f"ImageFolder: no files match {exec_properties[PATTERN_KEY]!r} in {source_uri}")
    if exec_properties.get(BOXES_JSON_KEY):
        fingerprint += ";boxes:" + input_fingerprint.content_fingerprint([exec_properties[BOXES_JSON_KEY]])
    return fingerprint


class ImageFolderDriver(input_fingerprint.FingerprintDriver):
    """Fingerprints the folder's listing (names, sizes, mtimes of the files matching ``pattern``)."""

    def fingerprint(self, exec_properties: Dict[str, Any]) -> str:
        return folder_fingerprint(exec_properties)


class ImageFolderExecutor(base_executor.BaseExecutor):
    """Points the ``Images`` artifact at the folder and records the fingerprint on it."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        del input_dict
        images = artifact_utils.get_single_instance(output_dict[IMAGES_KEY])
        source_uri = exec_properties[SOURCE_URI_KEY]
        fingerprint = exec_properties.get(input_fingerprint.FINGERPRINT_KEY)
        if not fingerprint:
            # Orchestrators without the driver (Kubeflow V2 / Vertex) reach here without a fingerprint.
            fingerprint = folder_fingerprint(exec_properties)
        # The artifact is a reference to the folder (as an Importer's), not a copy of it.
        images.uri = source_uri
        images.set_string_custom_property(input_fingerprint.FINGERPRINT_KEY, fingerprint)
        images.set_string_custom_property(SOURCE_URI_KEY, source_uri)
        images.set_int_custom_property(NUM_FILES_PROPERTY, int(fingerprint.split(",", 1)[0].split(":", 1)[1]))
        logging.info("ImageFolder: %s (%s)", source_uri, fingerprint)


class ImageFolder(base_component.BaseComponent):
    """A folder of images as an ``Images`` artifact whose listing is part of the cache key.

    Args:
        source_uri: the folder (local path or ``gs://``; a ``RuntimeParameter`` in the Kubeflow compile).
        pattern: file-name glob of the images inside it; the fingerprint covers these files.
        boxes_json: a file describing the images (ground-truth boxes) whose content joins the fingerprint.
    """

    SPEC_CLASS = ImageFolderSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ImageFolderExecutor)
    DRIVER_CLASS = ImageFolderDriver

    def __init__(self, source_uri: Union[str, data_types.RuntimeParameter], pattern: str = "*",
                 boxes_json: Union[str, data_types.RuntimeParameter, None] = None):
        super().__init__(spec=ImageFolderSpec(source_uri=source_uri, pattern=pattern, boxes_json=boxes_json,
                                              images=types.Channel(type=Images)))
