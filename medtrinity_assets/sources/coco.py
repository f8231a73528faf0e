"""Images with boxes and polygons in a COCO JSON file (TBX11K, covid lung boxes).

One object gives one annotation: its polygon as a contour when it has one (the box follows
from it), else its box. COCO boxes are [x, y, width, height] in pixels; records carry
[x0, y0, x1, y1] clamped to the image, and a box wholly outside the image is reported.
Parsing is ``box_formats.parse_coco``, shared with the ``extra_boxes`` overlay.
"""

from __future__ import annotations

from medtrinity_assets.catalog.spec import CocoLayout
from medtrinity_assets.sources.base import (
    IngestContext,
    IngestStream,
    Quarantined,
    record_id_for,
)
from medtrinity_assets.sources.box_formats import parse_coco, resolve_boxes
from medtrinity_assets.sources.image_common import (
    decode_image,
    image_record,
    path_labels,
    path_says_normal,
    patient_id_for,
)
from medtrinity_assets.sources.label_state import decide_label_state


def read(ctx: IngestContext) -> IngestStream:
    spec = ctx.spec
    layout: CocoLayout = spec.layout
    table = parse_coco(ctx.root, layout.annotations, layout.image_root)
    yield from table.problems

    for relative_path, objects in table.boxes.items():
        if not objects and not layout.keep_unannotated:
            continue
        if not ctx.owns(relative_path):
            continue  # another shard's image: its boxes follow it there
        decoded = decode_image(ctx, relative_path, f"listed in {layout.annotations} but file is absent")
        if isinstance(decoded, Quarantined):
            yield decoded
            continue
        pixels, photometric = decoded
        height, width = pixels.shape[:2]
        declared = table.sizes.get(relative_path)
        if declared and declared != (width, height):
            # Boxes are in the declared frame: on another size they would point at wrong pixels.
            yield Quarantined(relative_path, f"image is {width}x{height} but {layout.annotations} says {declared[0]}x{declared[1]}", kind="invalid_annotation")
            continue
        record_id = record_id_for(spec.id, relative_path, None, -1)
        annotations, labels, problems = resolve_boxes(
            spec, objects, relative_path, width, height, record_id, layout.known_labels
        )
        yield from problems
        labels = sorted(set(labels) | set(path_labels(spec, relative_path)))
        yield image_record(
            ctx,
            relative_path,
            pixels,
            photometric,
            labels=labels,
            annotations=annotations,
            patient_id=patient_id_for(spec, relative_path),
            # A folder the spec declares normal (TBX11K "health") makes an unboxed image normal.
            label_state=decide_label_state(bool(labels), path_says_normal(spec, relative_path)),
        )
