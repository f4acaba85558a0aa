"""Bottom-up-attention TSV: one image per line, tab-separated, no header.

Columns: image_id, image_w, image_h, num_boxes, boxes, features [, cls_prob]; the last
ones base64 float32 [N,4] (pixel x1,y1,x2,y2), [N,F], [N,C]. F and C are inferred from
byte lengths and must agree across lines (and files). class_target: "distribution" when
cls_prob is present, else the records carry no class target (prepare rejects that unless
the model does not need one).
"""
from interbert_jax.data.importers.common import (
    DimTracker, RecordError, check_columns, expand_paths, infer_width, location,
    parse_boxes, parse_int, raise_error, text, tsv_rows)

COLUMNS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features", "cls_prob")


def iter_images(paths, on_error=raise_error, **unused_options):
  """Yields image records of the BUTD TSV file(s) `paths` (comma-separated or list)."""
  feature_dim, num_classes = DimTracker("features"), DimTracker("cls_prob")
  columns = None  # 6 or 7, fixed by the first record.
  for path in expand_paths(paths):
    for line, row in tsv_rows(path):
      source = location(path, line)
      try:
        check_columns(source, row, {columns} if columns else {6, 7}, COLUMNS[:columns or 7])
        columns = columns or len(row)
        yield _parse(source, row, feature_dim, num_classes)
      except RecordError as e:
        on_error(e)


def _parse(source, row, feature_dim, num_classes):
  n, boxes = parse_boxes(source, row[3], row[4])
  features = infer_width(source, "features", row[5], n)
  feature_dim.check(source, features.shape[1])
  record = {"image_id": text(row[0]), "width": parse_int(source, "image_w", row[1]),
            "height": parse_int(source, "image_h", row[2]), "num_boxes": n,
            "boxes": boxes, "features": features, "source": source}
  if len(row) == 7:
    cls_prob = infer_width(source, "cls_prob", row[6], n)
    num_classes.check(source, cls_prob.shape[1])
    record["cls_prob"] = cls_prob
  return record
