"""A directory of per-image .npz files (UNITER style); image_id = file stem.

Arrays: `features` [N,F] (fp16), `norm_bb` [N,4+] boxes normalised to [0,1] (x1,y1,x2,y2
first; UNITER appends w,h,area), `soft_labels` [N,C] class distribution (optional),
`conf` [N] detector confidence (optional), `width`/`height` (optional scalars, also
accepted as `image_w`/`image_h`).

Without width/height the image size is unknown: boxes are stored as norm × (1, 1) with
width = height = 1, i.e. still normalised, which the pipeline's location features
(x/W, y/H) turn back into the same values.
Files are read in sorted name order, so the order is deterministic.
"""
import os

import numpy as np

from interbert_jax.errors import MissingFileError
from interbert_jax.data.importers.common import RecordError, raise_error

_SIZE_KEYS = (("width", "height"), ("image_w", "image_h"), ("w", "h"))


def _list_npz(paths):
  dirs = [p for p in paths.split(",") if p] if isinstance(paths, str) else list(paths)
  for d in dirs:
    if not os.path.isdir(d):
      raise MissingFileError(f"{d}: not a directory (--format=npz_dir wants a directory "
                             "of .npz files)")
    names = sorted(e.name for e in os.scandir(d) if e.name.endswith(".npz"))
    if not names:
      raise MissingFileError(f"{d}: no .npz files")
    for name in names:
      yield os.path.join(d, name)


def iter_images(paths, on_error=raise_error, **unused_options):
  """Yields one image record per .npz file of the directory (or directories) `paths`."""
  for path in _list_npz(paths):
    try:
      record = _read(path)
    except RecordError as e:
      on_error(e)
      continue
    except (ValueError, TypeError) as e:  # Arrays of the wrong shape/size.
      on_error(RecordError(path, "bad_shape", str(e)))
      continue
    yield record


def _read(path):
  source = path
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # Corrupt zip, truncated file...
    raise RecordError(source, "unreadable_file", f"cannot read the .npz ({e})") from None
  with z:
    for key in ("features", "norm_bb"):
      if key not in z.files:
        raise RecordError(source, "missing_array",
                          f"array {key!r} is missing (has {sorted(z.files)})")
    features = z["features"]
    norm_bb = z["norm_bb"]
    n = len(features)
    if n == 0:
      raise RecordError(source, "no_boxes", "features have 0 rows: an image needs at "
                        "least one region")
    if features.ndim != 2:
      raise RecordError(source, "bad_shape", f"features have shape {features.shape}, "
                        "expected [num_boxes, feature_dim]")
    if norm_bb.ndim != 2 or norm_bb.shape[0] != n or norm_bb.shape[1] < 4:
      raise RecordError(source, "num_boxes_mismatch",
                        f"norm_bb has shape {norm_bb.shape} for {n} feature rows")
    width = height = None
    for wk, hk in _SIZE_KEYS:
      if wk in z.files and hk in z.files:
        width, height = int(z[wk]), int(z[hk])
        break
    scale = np.array([width or 1, height or 1] * 2, np.float32)
    record = {"image_id": os.path.splitext(os.path.basename(path))[0],
              "width": width or 1, "height": height or 1, "num_boxes": n,
              "boxes": norm_bb[:, :4].astype(np.float32) * scale,
              "features": features, "source": source,
              "normalized_boxes": width is None}
    if "soft_labels" in z.files:
      soft = z["soft_labels"]
      if soft.ndim != 2 or soft.shape[0] != n:
        raise RecordError(source, "num_boxes_mismatch",
                          f"soft_labels has shape {soft.shape} for {n} feature rows")
      record["cls_prob"] = soft
      record["object_ids"] = soft.argmax(-1).astype(np.int32)
      # The detector's own confidence is what adaptive region selection wants.
      record["object_conf"] = (z["conf"].astype(np.float32).reshape(n) if "conf" in z.files
                               else soft.max(-1).astype(np.float32))
    return record
