"""One stored image record as bytes: a small msgpack header, then the arrays' raw bytes.

  record = uint32 little-endian H | msgpack header (H bytes) | pad | array bytes ...
  header = {"image_id": str, "width": int, "height": int, "num_boxes": int,
            "arrays": [[name, dtype, shape, offset], ...]}    offset: from the record start

`decode` parses the few-hundred-byte header and views every array in place
(`np.frombuffer`, read-only): no protobuf parse and no copy of the ~260 KB of features and
class distributions per base-shape image. Arrays start on 16-byte boundaries of the record.
The format name, FORMAT, is recorded per split in metadata.json (schema.py).
"""
from __future__ import annotations

import struct
from typing import Mapping

import msgpack
import numpy as np

FORMAT = "msgpack-header+raw-arrays-v1"
# The stored dtype of every array field; the first axis of each is num_boxes.
ARRAY_DTYPES = {"boxes": np.float32, "features": np.float16, "cls_prob": np.float16,
                "object_ids": np.int32, "object_conf": np.float32}
SCALARS = ("width", "height", "num_boxes")
_ALIGN = 16
_LEN = struct.Struct("<I")


def encode(example: Mapping) -> bytes:
  """An image record (schema.to_example's dict) -> bytes."""
  arrays = [(name, np.ascontiguousarray(example[name], dtype))
            for name, dtype in ARRAY_DTYPES.items() if example.get(name) is not None]

  def header(offsets):
    return msgpack.packb({
        "image_id": str(example["image_id"]),
        **{k: int(example[k]) for k in SCALARS},
        "arrays": [[name, a.dtype.str, list(a.shape), off]
                   for (name, a), off in zip(arrays, offsets)]})

  # The header's size depends on the offsets (msgpack ints vary in width): place the
  # arrays after a header sized with the largest offsets, then pad the real one.
  total = sum(a.nbytes + _ALIGN for _, a in arrays)
  start = _aligned(_LEN.size + len(header([total] * len(arrays))))
  offsets, pos = [], start
  for _, a in arrays:
    offsets.append(pos)
    pos = _aligned(pos + a.nbytes)
  head = header(offsets)
  out = bytearray(pos)
  out[:_LEN.size] = _LEN.pack(len(head))
  out[_LEN.size:_LEN.size + len(head)] = head
  for (_, a), off in zip(arrays, offsets):
    out[off:off + a.nbytes] = a.tobytes()
  return bytes(out)


def decode(record: bytes) -> dict:
  """bytes -> {image_id: str, width/height/num_boxes: np.int32, arrays: read-only views}.

  Raises ValueError for bytes that are not such a record (empty, truncated, garbled).
  """
  if len(record) < _LEN.size:
    raise ValueError(f"record of {len(record)} bytes: empty or truncated")
  (n,) = _LEN.unpack_from(record)
  if _LEN.size + n > len(record):
    raise ValueError(f"record header of {n} bytes does not fit the {len(record)}-byte record")
  try:
    head = msgpack.unpackb(memoryview(record)[_LEN.size:_LEN.size + n])
    out = {"image_id": head["image_id"], **{k: np.int32(head[k]) for k in SCALARS}}
    for name, dtype, shape, offset in head["arrays"]:
      count = int(np.prod(shape))
      out[name] = np.frombuffer(record, np.dtype(dtype), count, offset).reshape(shape)
  except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
    raise ValueError(f"not an image record ({type(e).__name__}: {e})") from None
  return out


def _aligned(n: int) -> int:
  return -(-n // _ALIGN) * _ALIGN
