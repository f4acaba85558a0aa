"""Streaming importers of region-feature files into image records (see data/schema.py).

Each importer module exposes `iter_images(paths, on_error=raise_error, **options)`, a
generator of image record dicts, one input record at a time (features never all in
memory). Each record carries `source` ("file:line N" / file name) so later checks can name
where a bad record came from. Parse errors are passed to `on_error` as a RecordError: the
default re-raises; `prepare --skip_bad` counts them and moves on.
"""
import importlib

from interbert_jax.errors import BadValueError
from interbert_jax.data.importers.common import RecordError, raise_error  # noqa: F401

FORMATS = ("butd_tsv", "lxmert_tsv", "npz_dir")


def get_importer(name):
  """The importer module for a format name ("butd_tsv" | "lxmert_tsv" | "npz_dir")."""
  if name not in FORMATS:
    raise BadValueError(f"unknown format {name!r}: one of {', '.join(FORMATS)}")
  return importlib.import_module(f"interbert_jax.data.importers.{name}")
