"""Zero-copy decoding of the stored image records (a speed path for the input pipeline).

schema.py stores every array of an image record as raw bytes inside a serialized
tf.train.Example (TFDS `Encoding.BYTES`). Decoding through TFDS or the protobuf library
copies each ~260 KB record twice; here we walk the protobuf wire format and view the array
bytes in place with `np.frombuffer` (read-only views of the record's bytes). `check`
compares against the reference decoder (schema.open_images) so a change of the storage
format is caught at start-up instead of producing wrong batches.

Wire format (protobuf): Example{1: Features{1: map<string, Feature>}}, each map entry
{1: key, 2: Feature{1: BytesList{1: bytes}, 2: FloatList{1: packed float},
3: Int64List{1: packed varint}}}.
"""
from __future__ import annotations

import numpy as np

# Dtypes of the array fields (schema.features_spec); the first axis is num_boxes.
ARRAY_FIELDS = {"boxes": np.float32, "features": np.float16, "cls_prob": np.float16,
                "object_ids": np.int32, "object_conf": np.float32}
INT_FIELDS = ("width", "height", "num_boxes")


def _varint(buf, pos):
  result = shift = 0
  while True:
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if b < 0x80:
      return result, pos
    shift += 7


def _fields(buf, start, end):
  """Yields (field_number, wire_type, value_start, value_end_or_int) of one message."""
  pos = start
  while pos < end:
    tag, pos = _varint(buf, pos)
    field, wire = tag >> 3, tag & 7
    if wire == 2:
      length, pos = _varint(buf, pos)
      yield field, wire, pos, pos + length
      pos += length
    elif wire == 0:
      value, pos = _varint(buf, pos)
      yield field, wire, value, None
    elif wire == 5:
      yield field, wire, pos, pos + 4
      pos += 4
    elif wire == 1:
      yield field, wire, pos, pos + 8
      pos += 8
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")


def _feature_value(buf, start, end):
  """A Feature message -> ('bytes', (s, e)) | ('int', int) | ('float', (s, e))."""
  for kind, _, s, e in _fields(buf, start, end):
    for _, wire, vs, ve in _fields(buf, s, e):   # The list's repeated field 1.
      if kind == 1:
        return "bytes", (vs, ve)
      if kind == 3:
        if wire == 2:                              # Packed varints: the first one.
          return "int", _varint(buf, vs)[0]
        return "int", vs
      if kind == 2:
        return "float", (vs, ve)
    return ("bytes", (s, s)) if kind == 1 else ("empty", None)
  return "empty", None


def decode(record: bytes) -> dict:
  """Serialized image record -> dict of numpy arrays (views) and ints (image_id as str)."""
  buf = memoryview(record)
  raw = {}
  for f1, _, s1, e1 in _fields(buf, 0, len(buf)):
    if f1 != 1:
      continue
    for f2, _, s2, e2 in _fields(buf, s1, e1):
      if f2 != 1:
        continue
      key, value = None, None
      for f3, _, s3, e3 in _fields(buf, s2, e2):
        if f3 == 1:
          key = bytes(buf[s3:e3]).decode("utf-8")
        elif f3 == 2:
          value = _feature_value(buf, s3, e3)
      raw[key] = value
  out = {}
  for key in INT_FIELDS:
    kind, v = raw[key]
    out[key] = np.int32(v if kind == "int" else 0)
  n = int(out["num_boxes"])
  for key, dtype in ARRAY_FIELDS.items():
    if key not in raw:
      continue
    kind, (s, e) = raw[key]
    arr = np.frombuffer(buf[s:e], dtype)
    out[key] = arr.reshape(n, -1) if key in ("boxes", "features", "cls_prob") else arr
  if "image_id" in raw:
    s, e = raw["image_id"][1]
    out["image_id"] = bytes(buf[s:e]).decode("utf-8")
  return out


def check(reference: dict, fast: dict) -> None:
  """Raises ValueError when the fast decoder disagrees with the reference decoder."""
  for key in set(reference) | set(fast):
    a, b = reference.get(key), fast.get(key)
    same = (a == b) if isinstance(a, str) else (
        a is not None and b is not None and np.asarray(a).dtype == np.asarray(b).dtype
        and np.array_equal(np.asarray(a), np.asarray(b)))
    if not same:
      raise ValueError(f"record_decode disagrees with schema.open_images on {key!r}: the "
                       "storage format changed; update interbert_jax/data/record_decode.py")
