"""Visual Genome region descriptions (``region_descriptions.json``), streamed element by element."""

from __future__ import annotations

from typing import Iterator

from uniter_tf.data import dead_letter
from uniter_tf.data.readers import _io
from uniter_tf.data.readers.text_item import TextItem


def read_vg_regions(path: str) -> Iterator:
    """Streams region phrases: ``[{"id": image_id, "regions": [{"region_id", "image_id", "phrase", "x", "y",
    "width", "height"}]}]``.

    ``example_id`` = ``vg_{region_id}``; image id = the numeric VG image id; ``target_box`` = the region's
    pixel ``[x, y, x + width, y + height]``. The file (~0.7 GB in the release) is never loaded whole.

    Yields:
        :class:`TextItem`, or :class:`DeadLetter` for regions missing fields.
    """
    try:
        for image_index, image in enumerate(_io.iter_json_array(path)):
            image_source = f"{path}#[{image_index}]"
            if not isinstance(image, dict):
                yield dead_letter.DeadLetter(image_source, dead_letter.MISSING_FIELD, "not an object", image_source)
                continue
            for region_index, region in enumerate(image.get("regions", []) or []):
                source = f"{image_source}.regions[{region_index}]"
                if not isinstance(region, dict):
                    yield dead_letter.DeadLetter(source, dead_letter.MISSING_FIELD, "region is not an object", source)
                    continue
                region_id = region.get("region_id", region.get("id"))
                image_id = region.get("image_id", image.get("id"))
                record_id = f"vg_{region_id}" if region_id is not None else source
                missing = [name for name, value in (("region_id", region_id), ("image_id", image_id),
                                                    ("phrase", region.get("phrase"))) if value is None]
                if missing:
                    yield dead_letter.DeadLetter(record_id, dead_letter.MISSING_FIELD,
                                                 f"region lacks {missing}", source)
                    continue
                target_box = None
                if all(key in region for key in ("x", "y", "width", "height")):
                    x, y = float(region["x"]), float(region["y"])
                    target_box = (x, y, x + float(region["width"]), y + float(region["height"]))
                yield TextItem(example_id=record_id, image_ids=(str(image_id),), text=str(region["phrase"]),
                               target_box=target_box, source=source)
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")
