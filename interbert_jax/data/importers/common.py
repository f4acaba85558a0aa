"""Shared parsing helpers and the RecordError every importer raises for bad input."""
import base64
import binascii
import glob
import os

import numpy as np

from interbert_jax import errors
from interbert_jax.errors import MissingFileError


class RecordError(errors.UserError, ValueError):
  """A bad input record: `reason` is a short key counted by --skip_bad; the message
  names the file and the line (or record) and says what is wrong."""

  def __init__(self, source: str, reason: str, message: str):
    super().__init__(f"{source}: {message} [{reason}]")
    self.source = source
    self.reason = reason


def raise_error(error: RecordError):
  raise error


def expand_paths(paths):
  """A comma-separated string / list of files or globs -> sorted existing paths."""
  if isinstance(paths, str):
    paths = [p for p in paths.split(",") if p]
  out = []
  for pattern in paths:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise MissingFileError(f"{pattern}: no such file")
    out.extend(matches)
  return out


UTF8_BOM = b"\xef\xbb\xbf"


def tsv_rows(path):
  """Yields (line_number, columns) of a tab-separated file, streaming, one line at a time.

  Plain byte splitting rather than the csv module: no field-size limit to raise (feature
  columns are megabytes, csv's default limit is 128 KiB), no quoting (base64 and ids
  have none) and ~3x faster. Columns are bytes (base64 decodes them directly); a line cut
  short by a truncated file simply has fewer columns or a bad base64 length.
  """
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, 1):
      if line_no == 1 and line.startswith(UTF8_BOM):
        line = line[len(UTF8_BOM):]   # a BOM (editors on Windows) is not part of the id
      line = line.rstrip(b"\r\n")
      if not line.strip():
        continue  # Blank lines (e.g. a trailing newline) are not records.
      yield line_no, line.split(b"\t")


def text_lines(path):
  """Yields (line_number, str) of a UTF-8 text file (JSON lines, vocab.txt), the line ending
  kept; a leading byte-order mark is dropped; a line that is not UTF-8 raises
  RecordError naming the file and line."""
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, 1):
      if line_no == 1 and line.startswith(UTF8_BOM):
        line = line[len(UTF8_BOM):]
      try:
        yield line_no, line.decode("utf-8")
      except UnicodeDecodeError as e:
        raise RecordError(f"{path}:line {line_no}", "not_utf8",
                          f"not UTF-8 text ({e.reason} at byte {e.start}); save the file "
                          "as UTF-8") from None


def text(column: bytes) -> str:
  """A non-base64 column (id, size, count) as str."""
  return column.decode("utf-8", errors="replace").strip()


def decode_array(source, name, column, dtype, shape_tail=(), rows=None):
  """Decodes a base64 column into `dtype` [rows, *shape_tail]; rows inferred if None.

  Raises RecordError (reason "bad_base64") when the text is not base64 or its byte length
  does not fit the expected shape.
  """
  try:
    raw = base64.b64decode(column, validate=True)
  except (binascii.Error, ValueError) as e:
    raise RecordError(source, "bad_base64", f"column {name!r} is not valid base64 ({e}); "
                      "the line may be truncated") from None
  itemsize = np.dtype(dtype).itemsize
  row_elems = int(np.prod(shape_tail)) if shape_tail else 1
  if rows is not None:
    expected = rows * row_elems * itemsize
    if len(raw) != expected:
      raise RecordError(
          source, "bad_base64",
          f"column {name!r} decodes to {len(raw)} bytes, expected {expected} "
          f"({rows} x {list(shape_tail) or 1} {np.dtype(dtype).name})")
  elif len(raw) % (row_elems * itemsize):
    raise RecordError(source, "bad_base64",
                      f"column {name!r} decodes to {len(raw)} bytes, not a multiple of "
                      f"{row_elems * itemsize}")
  return np.frombuffer(raw, dtype=dtype).reshape((-1,) + tuple(shape_tail))


def infer_width(source, name, column, rows, dtype=np.float32):
  """Decodes a base64 [rows, W] matrix, inferring W from the byte length."""
  arr = decode_array(source, name, column, dtype)  # 1-D
  if rows <= 0 or arr.size % rows:
    raise RecordError(source, "bad_base64",
                      f"column {name!r} has {arr.size} values, not divisible by "
                      f"num_boxes={rows}")
  return arr.reshape(rows, arr.size // rows)


def parse_int(source, name, column):
  value = text(column)
  try:
    return int(float(value)) if "." in value else int(value)
  except (ValueError, OverflowError):
    raise RecordError(source, "bad_number",
                      f"column {name!r} is {value[:40]!r}, not a number") from None


def check_columns(source, row, expected, names):
  if len(row) not in expected:
    want = " or ".join(str(e) for e in sorted(expected))
    raise RecordError(source, "truncated_line",
                      f"{len(row)} tab-separated columns, expected {want} "
                      f"({', '.join(names)}); the line is truncated or malformed")


class DimTracker:
  """Checks that a column's inferred width agrees across records of one run."""

  def __init__(self, name):
    self.name = name
    self.width = None
    self.first_source = None

  def check(self, source, width):
    if self.width is None:
      self.width, self.first_source = width, source
    elif width != self.width:
      raise RecordError(source, "bad_base64",
                        f"column {self.name!r} has width {width} but {self.first_source} "
                        f"had {self.width} (the base64 length is wrong)")


def location(path, line):
  return f"{os.fspath(path)}:line {line}"


def parse_boxes(source, num_boxes_column, boxes_column):
  """num_boxes and base64 float32 boxes [N, 4], checked against each other -> (N, boxes)."""
  n = parse_int(source, "num_boxes", num_boxes_column)
  if n <= 0:
    raise RecordError(source, "no_boxes", f"num_boxes is {n}: an image needs at least one region")
  boxes = decode_array(source, "boxes", boxes_column, np.float32, (4,))
  if n != len(boxes):
    raise RecordError(source, "num_boxes_mismatch",
                      f"num_boxes column says {n} but the boxes column holds {len(boxes)}")
  return n, boxes
