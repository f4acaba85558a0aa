"""How every absl program of the project starts and ends (errors.py has the error model).

  if __name__ == "__main__":
    cli.run(main)

- flags that do not parse (an unknown flag, a bad value, an unknown `--config.KEY`, a config
  file or variant that does not load) print one line, `error: ...`, and exit 2;
- `main` runs under `errors.cli_main`: a UserError (or an environmental OSError) is one
  line and exit 2, a RunError one line and exit 1, anything else keeps its traceback.
"""
import re
import sys

from absl import app
from absl import flags

from interbert_jax import errors


def _flag_of(argv, key: str) -> str | None:
  """The command-line argument that names config key `key` (e.g. --config.model.fusoin=x)."""
  for arg in argv[1:]:
    name = arg.split("=", 1)[0]
    if name.startswith("--") and (name.endswith("." + key) or f".{key}." in name):
      return arg
  return None


def flag_error_message(e: BaseException, argv) -> str | None:
  """One line for a flag-parsing failure (absl or ml_collections config_flags), or None
  when it is not the user's (an AttributeError / KeyError that no --config.KEY argument
  explains is a bug in the config file, and keeps its traceback)."""
  if isinstance(e, (AttributeError, KeyError)):
    text = str(e.args[0] if e.args else e).strip("'\"")
    key = re.match(r"\W*(\w+)", text)
    arg = _flag_of(argv, key.group(1)) if key else None
    if arg is None:
      return None
    hint = re.search(r'Did you mean "(\w+)"', text)
    return (f"{arg}: no such config key {key.group(1)!r}"
            + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
            + "; `--helpfull` lists the flags, configs/pretrain.py the keys")
  if isinstance(e, flags.Error):
    cause = errors.innermost(e)
    flag = re.match(r"(flag \S+): ", str(e))
    if cause is e or flag is None:
      return str(e)
    return f"{flag.group(1)}: {cause}"   # e.g. the config file's own error, not its traceback
  return str(errors.innermost(e))


def config_value(holder, flag: str = "--config"):
  """The ConfigDict of a `config_flags.DEFINE_config_file` holder; a config file that did
  not load is a UserError naming the flag and the cause."""
  try:
    value = holder.value
    if value is not None:
      value.keys()   # a config that failed to load raises only when first read
    return value
  except OSError as e:
    raise errors.UserError(f"{flag}: the config file did not load: "
                           f"{errors.one_line(errors.innermost(e))}") from None


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, OSError) as e:
    # AttributeError / KeyError: an unknown --config.KEY; ValueError: a config variant or
    # value the config file refuses; OSError: a config file that cannot be read.
    message = flag_error_message(e, argv)
    if message is None:
      raise
    print(f"error: {errors.one_line(message)}", file=sys.stderr)
    errors.exit_now(2)


def run(main) -> None:
  """app.run(main) with one-line errors (module docstring); app.UsageError (a missing or
  unexpected argument) is a user error too."""

  @errors.cli_main
  def checked(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      raise errors.UserError(f"{e} (see --help)") from None

  app.run(lambda argv: errors.exit_now(checked(argv)), flags_parser=_parse_flags)
