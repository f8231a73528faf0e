"""Images with boxes and polygons in a COCO JSON file (TBX11K, covid lung boxes).

One object gives one annotation: its polygon as a contour when it has one (the box follows
from it), else its box. COCO boxes are [x, y, width, height] in pixels; records carry
[x0, y0, x1, y1] clamped to the image, and a box wholly outside the image is reported.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict

from medtrinity_assets.catalog.spec import CocoLayout
from medtrinity_assets.sources.base import (
    IngestContext,
    IngestStream,
    Quarantined,
    record_id_for,
)
from medtrinity_assets.sources.image_common import (
    clamp_box,
    decode_image,
    image_record,
    patient_id_for,
    rename_label,
)


def polygon_points(segmentation) -> list[list[list[float]]]:
    """Polygons of a COCO segmentation as [[x, y], ...] lists; RLE (crowd) masks give none."""
    if not isinstance(segmentation, list):
        return []
    polygons = []
    for flat in segmentation:
        if isinstance(flat, list) and len(flat) >= 6 and len(flat) % 2 == 0:
            polygons.append([[float(flat[i]), float(flat[i + 1])] for i in range(0, len(flat), 2)])
    return polygons


def _coco_box(bbox) -> list[float] | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def read(ctx: IngestContext) -> IngestStream:
    spec = ctx.spec
    layout: CocoLayout = spec.layout
    json_path = ctx.root / layout.annotations
    try:
        coco = json.loads(json_path.read_text(encoding="utf-8"))
        images = coco["images"]
        objects = coco.get("annotations", [])
        categories = {c["id"]: c["name"] for c in coco.get("categories", [])}
    except FileNotFoundError:
        yield Quarantined(layout.annotations, "COCO annotation file is absent")
        return
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        yield Quarantined(layout.annotations, f"not a COCO annotation file: {type(error).__name__}: {error}")
        return

    image_ids = {image.get("id") for image in images}
    objects_by_image: dict[object, list[dict]] = defaultdict(list)
    for obj in objects:
        if obj.get("image_id") not in image_ids:
            yield Quarantined(
                layout.annotations, f"annotation {obj.get('id')} names image id {obj.get('image_id')} that is not listed"
            )
            continue
        objects_by_image[obj["image_id"]].append(obj)

    for image in images:
        file_name = str(image.get("file_name") or "")
        relative_path = posixpath.normpath(posixpath.join(layout.image_root, file_name))
        image_objects = objects_by_image.get(image.get("id"), [])
        if not image_objects and not layout.keep_unannotated:
            continue
        if not file_name or not (ctx.root / relative_path).is_file():
            yield Quarantined(relative_path, f"listed in {layout.annotations} but file is absent")
            continue
        decoded = decode_image(ctx, relative_path)
        if isinstance(decoded, Quarantined):
            yield decoded
            continue
        pixels, photometric = decoded
        height, width = pixels.shape[:2]
        declared = (image.get("width"), image.get("height"))
        if all(declared) and declared != (width, height):
            # Boxes are in the declared frame: on another size they would point at wrong pixels.
            yield Quarantined(relative_path, f"image is {width}x{height} but {layout.annotations} says {declared[0]}x{declared[1]}")
            continue

        record_id = record_id_for(spec.id, relative_path, None, -1)
        annotations: list[dict] = []
        labels: set[str] = set()
        for obj in image_objects:
            raw_name = categories.get(obj.get("category_id"))
            if raw_name is None:
                yield Quarantined(relative_path, f"annotation {obj.get('id')} has unknown category id {obj.get('category_id')}", record_id)
                continue
            label = rename_label(spec, raw_name)
            if label is None:
                continue  # a category the spec maps to "no finding"
            polygons = polygon_points(obj.get("segmentation"))
            if polygons:
                for points in polygons:
                    clipped = [[min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))] for x, y in points]
                    annotations.append({"kind": "contour", "label": label, "points": clipped, "coco_id": obj.get("id")})
                labels.add(label)
                continue
            box = _coco_box(obj.get("bbox"))
            clamped = clamp_box(box, width, height) if box else None
            if clamped is None:
                yield Quarantined(relative_path, f"box {obj.get('bbox')} of annotation {obj.get('id')} ({label}) lies outside the {width}x{height} image", record_id)
                continue
            annotations.append({"kind": "box", "label": label, "box": clamped, "coco_id": obj.get("id")})
            labels.add(label)
        yield image_record(
            ctx,
            relative_path,
            pixels,
            photometric,
            labels=sorted(labels),
            annotations=annotations,
            patient_id=patient_id_for(spec, relative_path),
        )
