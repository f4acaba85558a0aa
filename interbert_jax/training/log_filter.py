"""A quiet log: our INFO lines and every library's warnings; library INFO only with -v 1.

Orbax, JAX and Grain log through absl / Python logging at INFO (orbax: a few lines per
checkpoint save, finalize and delete). A filter on absl's handler keeps INFO records that
come from this package and drops the others unless absl's verbosity is >= 1 (`-v 1`).
Library warnings and errors keep their first line; their tracebacks (a failed orbax save
logs them from each of its threads) show only with -v 1.

Exceptions Python cannot raise anywhere ("Exception ignored in: <coroutine ...>", printed
by `sys.unraisablehook` when a library's failed asyncio read is garbage-collected: orbax
restoring a corrupt checkpoint leaves one per unreadable array, each with a 60-line
TensorStore spec) become one debug line; -v 1 prints them in full as Python would.
"""
import sys
import logging as pylogging
import os

from absl import logging

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OwnInfoFilter(pylogging.Filter):
  """Passes WARNING and above, and below that only records logged by interbert_jax."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    if logging.get_verbosity() >= 1:
      return True
    own = record.pathname.startswith(_PACKAGE_DIR)
    if record.levelno < pylogging.WARNING:
      return own
    if not own:
      _first_line_only(record)
    return True


def _first_line_only(record: pylogging.LogRecord, limit: int = 400) -> None:
  """Cuts a library record to the first line of its message, without the traceback."""
  lines = record.getMessage().splitlines() or [""]
  if record.exc_info or record.exc_text or record.stack_info or len(lines) > 1:
    first = lines[0] if len(lines[0]) <= limit else lines[0][:limit - 3] + "..."
    record.msg, record.args = first + " [details: -v 1]", None
    record.exc_info = record.exc_text = record.stack_info = None


def _quiet_unraisable(unraisable) -> None:
  """sys.unraisablehook: one debug line (full report with -v 1)."""
  if logging.get_verbosity() >= 1:
    sys.__unraisablehook__(unraisable)
    return
  first = (str(unraisable.exc_value).splitlines() or [""])[0][:200]
  logging.debug("exception ignored in %r: %s: %s", unraisable.object,
                getattr(unraisable.exc_type, "__name__", unraisable.exc_type), first)


def install() -> None:
  """INFO from interbert_jax on absl's handler (stderr); library chatter behind -v 1."""
  sys.unraisablehook = _quiet_unraisable
  pylogging.getLogger("absl").setLevel(pylogging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, OwnInfoFilter) for f in handler.filters):
    handler.addFilter(OwnInfoFilter())
