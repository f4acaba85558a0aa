"""LXMERT TSV (its `utils.py load_obj_tsv`): one image per line, tab-separated.

Columns: img_id, img_h, img_w (height BEFORE width), objects_id (base64 int64 [N]),
objects_conf (float32 [N]), attrs_id (int64 [N]), attrs_conf (float32 [N]), num_boxes,
boxes (float32 [N,4] pixel x1,y1,x2,y2), features (float32 [N,F], F inferred).
class_target "object_ids": the detector's object ids and confidences; attributes are read
(validated) but not stored, no model task uses them.
"""
import numpy as np

from interbert_jax.data.importers.common import (
    DimTracker, RecordError, check_columns, decode_array, expand_paths, infer_width,
    location, parse_boxes, parse_int, raise_error, text, tsv_rows)

COLUMNS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id",
           "attrs_conf", "num_boxes", "boxes", "features")


def iter_images(paths, on_error=raise_error, num_classes=None, **unused_options):
  """Yields image records; `num_classes` bounds the object ids (checked when given)."""
  feature_dim = DimTracker("features")
  for path in expand_paths(paths):
    for line, row in tsv_rows(path):
      source = location(path, line)
      try:
        check_columns(source, row, {len(COLUMNS)}, COLUMNS)
        yield _parse(source, row, feature_dim, num_classes)
      except RecordError as e:
        on_error(e)


def _parse(source, row, feature_dim, num_classes):
  n, boxes = parse_boxes(source, row[7], row[8])
  object_ids = decode_array(source, "objects_id", row[3], np.int64, rows=n)
  object_conf = decode_array(source, "objects_conf", row[4], np.float32, rows=n)
  decode_array(source, "attrs_id", row[5], np.int64, rows=n)
  decode_array(source, "attrs_conf", row[6], np.float32, rows=n)
  if num_classes is not None and n and (object_ids.min() < 0
                                        or object_ids.max() >= num_classes):
    raise RecordError(source, "bad_object_id",
                      f"object ids span [{object_ids.min()}, {object_ids.max()}], "
                      f"outside [0, {num_classes}) (set --num_classes)")
  features = infer_width(source, "features", row[9], n)
  feature_dim.check(source, features.shape[1])
  return {"image_id": text(row[0]), "height": parse_int(source, "img_h", row[1]),
          "width": parse_int(source, "img_w", row[2]), "num_boxes": n, "boxes": boxes,
          "features": features, "object_ids": object_ids.astype(np.int32),
          "object_conf": object_conf, "source": source}
