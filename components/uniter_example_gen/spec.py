"""The ComponentSpec of :class:`components.uniter_example_gen.component.UniterExampleGen`."""

from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.artifacts import RegionFeatures
from components.input_fingerprint import FINGERPRINT_KEY

FEATURES_KEY = "features"
EXAMPLES_KEY = "examples"
ANNOTATION_FORMAT_KEY = "annotation_format"
ANNOTATIONS_KEY = "annotations"
ANNOTATIONS2_KEY = "annotations2"
FEATURES_PATH_KEY = "features_path"
INGEST_OPTIONS_KEY = "ingest_options"
INPUT_BASE_KEY = "input_base"


class UniterExampleGenSpec(ComponentSpec):
    """Input: optional region features (a ``RegionFeatures`` artifact from region-feature extraction).

    Parameters: the annotation format and files (JSON lists of paths), an optional feature location
    (``features_path``: img_db / npz / TSV / TFRecord paths or globs, used when there is no features
    channel) and the other :class:`uniter_tf.data.ingest.IngestConfig` fields as a JSON object.
    ``input_base`` (optional, may be a runtime parameter) is the folder that relative annotation paths
    are under; ``input_fingerprint`` is set by the component's driver (the annotation files' content).

    Output: a standard ``Examples`` artifact with ``train`` and ``eval`` splits.
    """

    PARAMETERS = {
            ANNOTATION_FORMAT_KEY: ExecutionParameter(type=str),
            ANNOTATIONS_KEY: ExecutionParameter(type=str),
            ANNOTATIONS2_KEY: ExecutionParameter(type=str, optional=True),
            FEATURES_PATH_KEY: ExecutionParameter(type=str, optional=True),
            INGEST_OPTIONS_KEY: ExecutionParameter(type=str, optional=True),
            INPUT_BASE_KEY: ExecutionParameter(type=str, optional=True),
            FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
            FEATURES_KEY: ChannelParameter(type=RegionFeatures, optional=True),
    }
    OUTPUTS = {
            EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    }
