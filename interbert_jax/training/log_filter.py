"""A quiet log: our INFO lines and every library's warnings; library INFO only with -v 1.

Orbax, JAX and TFDS log through absl / Python logging at INFO (orbax: a few lines per
checkpoint save, finalize and delete). A filter on absl's handler keeps INFO records that
come from this package and drops the others unless absl's verbosity is >= 1 (`-v 1`).
"""
import logging as pylogging
import os

from absl import logging

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OwnInfoFilter(pylogging.Filter):
  """Passes WARNING and above, and below that only records logged by interbert_jax."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.levelno >= pylogging.WARNING or logging.get_verbosity() >= 1:
      return True
    return record.pathname.startswith(_PACKAGE_DIR)


def install() -> None:
  """INFO from interbert_jax on absl's handler (stderr); library chatter behind -v 1."""
  pylogging.getLogger("absl").setLevel(pylogging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, OwnInfoFilter) for f in handler.filters):
    handler.addFilter(OwnInfoFilter())
