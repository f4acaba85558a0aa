"""The quiet log (`training/log_filter.py`) in a fresh interpreter: a library's INFO is
dropped, its warning keeps one line, and an exception Python cannot raise (an orbax read
garbage-collected after a corrupt restore) is not a traceback on stderr; -v 1 shows all."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = r"""
import logging, sys
from absl import app
from interbert_jax.training import log_filter

class Doomed:
  def __del__(self):
    raise ValueError("read failed\n" + "  'spec': {...}\n" * 50)

def main(_):
  log_filter.install()
  lib = logging.getLogger("somelib")
  lib.info("library chatter")
  try:
    raise KeyError("inner")
  except KeyError:
    lib.warning("library warning line one\nline two", exc_info=True)
  Doomed()

app.run(main)
"""


def _run(*flags):
  return subprocess.run([sys.executable, "-c", PROGRAM, *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=True).stderr


def test_library_noise_is_one_line_by_default():
  err = _run()
  assert "library chatter" not in err
  assert "library warning line one [details: -v 1]" in err and "line two" not in err
  assert "Traceback" not in err and "read failed" not in err and "'spec'" not in err


def test_verbose_shows_everything():
  err = _run("-v", "1")
  assert "library chatter" in err and "line two" in err
  assert "Exception ignored" in err and "read failed" in err
