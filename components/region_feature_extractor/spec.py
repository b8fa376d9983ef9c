"""The ComponentSpec of :class:`components.region_feature_extractor.component.RegionFeatureExtractor`."""

from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.artifacts import Images, RegionFeatures

IMAGES_KEY = "images"
REGION_FEATURES_KEY = "region_features"
IMAGE_PATTERN_KEY = "image_pattern"
DETECTOR_PATH_KEY = "detector_path"
NUM_CLASSES_KEY = "num_classes"
CONF_THRESHOLD_KEY = "conf_threshold"
MIN_BOXES_KEY = "min_boxes"
MAX_BOXES_KEY = "max_boxes"
FILL_KEY = "fill"
BOXES_JSON_KEY = "boxes_json"
CROP_SIZE_KEY = "crop_size"
NUM_SHARDS_KEY = "num_shards"


class RegionFeatureExtractorSpec(ComponentSpec):
    """Input: an optional ``Images`` artifact (a directory of images).

    Parameters: ``image_pattern`` (a glob inside the Images artifact, or an absolute glob when there is no
    input channel), the detector (``detector_path``, ``num_classes``), the UNITER box rule
    (``conf_threshold``, ``min_boxes``, ``max_boxes``, ``fill`` 0/1), ground-truth boxes (``boxes_json``),
    RoI pooling (``crop_size``) and ``num_shards``.

    Output: a ``RegionFeatures`` artifact.
    """

    PARAMETERS = {
            IMAGE_PATTERN_KEY: ExecutionParameter(type=str),
            DETECTOR_PATH_KEY: ExecutionParameter(type=str, optional=True),
            NUM_CLASSES_KEY: ExecutionParameter(type=int),
            CONF_THRESHOLD_KEY: ExecutionParameter(type=float),
            MIN_BOXES_KEY: ExecutionParameter(type=int),
            MAX_BOXES_KEY: ExecutionParameter(type=int),
            FILL_KEY: ExecutionParameter(type=int),
            BOXES_JSON_KEY: ExecutionParameter(type=str, optional=True),
            CROP_SIZE_KEY: ExecutionParameter(type=int),
            NUM_SHARDS_KEY: ExecutionParameter(type=int),
    }
    INPUTS = {
            IMAGES_KEY: ChannelParameter(type=Images, optional=True),
    }
    OUTPUTS = {
            REGION_FEATURES_KEY: ChannelParameter(type=RegionFeatures),
    }
