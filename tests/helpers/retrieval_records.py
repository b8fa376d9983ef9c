"""Small canonical per-image region records for the retrieval serving tests (no model needed)."""

import numpy as np


def write_region_records(path, image_ids, feature_dim=8, seed=0, regions=(2, 6)):
    """Writes one per-image canonical record per id (``regions`` = [low, high) regions each, random features).

    Returns:
        ``{image_id: region_features [n, feature_dim]}`` as written (before the float16 storage rounding).
    """
    import tensorflow as tf

    from uniter_tf.data import schema

    rng = np.random.default_rng(seed)
    written = {}
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image_id in image_ids:
            count = int(rng.integers(*regions))
            corners = np.sort(rng.uniform(0, 100, (count, 2, 2)), axis=1)
            boxes = corners.reshape(count, 4)[:, [0, 2, 1, 3]].astype(np.float32)
            features = rng.standard_normal((count, feature_dim)).astype(np.float32)
            writer.write(schema.make_example(image_id=image_id, region_features=features, region_boxes=boxes,
                                             image_height=100, image_width=100).SerializeToString())
            written[image_id] = features
    return written
