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
        :class:`TextItem`; :class:`DeadLetter` for regions with missing (``missing_field``) or mistyped
        (``bad_type``) fields, and for image entries that are not objects (kind ``input``).
    """
    try:
        for image_index, image in enumerate(_io.iter_json_array(path)):
            image_source = f"{path}#[{image_index}]"
            if not isinstance(image, dict):
                yield dead_letter.DeadLetter(image_source, dead_letter.BAD_TYPE,
                                             f"not an object: {dead_letter.describe_value(image)}", image_source,
                                             kind="input")
                continue
            regions = image.get("regions") or []
            if not isinstance(regions, list):
                yield dead_letter.DeadLetter(image_source, dead_letter.BAD_TYPE, "'regions' must be a list, got "
                                             f"{dead_letter.describe_value(regions)}", image_source, kind="input")
                continue
            for region_index, region in enumerate(regions):
                source = f"{image_source}.regions[{region_index}]"
                if not isinstance(region, dict):
                    yield dead_letter.DeadLetter(source, dead_letter.BAD_TYPE, "region is not an object, got "
                                                 f"{dead_letter.describe_value(region)}", source)
                    continue
                region_id = region.get("region_id", region.get("id"))
                image_id = region.get("image_id", image.get("id"))
                problem = _io.id_problem(region_id, "region_id")
                record_id = f"vg_{region_id}" if problem is None else source
                problem = (problem or _io.id_problem(image_id, "image_id")
                           or _io.text_problem(region.get("phrase"), "phrase"))
                target_box = None
                if problem is None and all(key in region for key in ("x", "y", "width", "height")):
                    problem = next(filter(None, (_io.number_problem(region[key], key)
                                                 for key in ("x", "y", "width", "height"))), None)
                    if problem is None:
                        x, y = float(region["x"]), float(region["y"])
                        target_box = (x, y, x + float(region["width"]), y + float(region["height"]))
                if problem is not None:
                    yield _io.letter(record_id, problem, source)
                    continue
                yield TextItem(example_id=record_id, image_ids=(str(image_id),), text=region["phrase"],
                               target_box=target_box, source=source)
    except _io.UnreadableFileError as error:
        yield dead_letter.DeadLetter(path, dead_letter.UNREADABLE_INPUT, str(error), path, kind="input")
