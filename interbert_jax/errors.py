"""One error model for every command.

- `UserError`: something the user can fix — a bad config, path, name, dataset or checkpoint,
  no space, no permission, a workdir another run holds. Every CLI prints one line,
  `error: <message>`, and exits 2. The library's own error types (ConfigError, DatasetError,
  ExportError, ...) derive from it, so callers catch one type.
- `RunError`: a run that started and then stopped for a reason outside the code (a
  non-finite loss, a failed save, an unreadable data record, a dead loader worker): one
  line, exit 1, and the last good checkpoint is kept.
- Anything else is a bug and keeps its traceback.

An `OSError` whose cause is the user's environment (permission denied, no space, a
read-only file system, a file-size limit, a missing file the user named) is a user error
too: `cli_main` turns it into one line that names the path.
"""
import errno
import functools
import os
import re
import sys

# errno values that describe the user's files or machine, never a bug of ours.
USER_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the disk is full or a file-size limit was reached)",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
}
MAX_LINE = 4000   # one line, however long: a run error lists every checkpoint it tried


class UserError(Exception):
  """Something the user can fix; the message says what and, where it can, how."""


class BadValueError(UserError, ValueError):
  """A value the user gave (a flag, a config key, a file's content) that cannot work."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the user named does not exist."""


class RunError(Exception):
  """A started run stopped for a reason outside the code; the message says which."""


def one_line(message: str, limit: int = MAX_LINE) -> str:
  """`message` on one line (whitespace runs collapsed), at most `limit` characters."""
  text = re.sub(r"\s+", " ", str(message)).strip()
  return text if len(text) <= limit else text[:limit - 3] + "..."


def innermost(error: BaseException) -> BaseException:
  """The innermost cause or context of `error` (at most 10 links down)."""
  for _ in range(10):
    inner = error.__cause__ or error.__context__
    if inner is None:
      break
    error = inner
  return error


def cause_line(error: BaseException, limit: int = 300) -> str:
  """'Type: first line of the message' of the innermost cause of `error` (orbax and
  TensorStore wrap the reason, e.g. OUT_OF_RANGE reading a file, in 100-line spec dumps),
  at most `limit` characters."""
  error = innermost(error)
  text = str(error).strip().splitlines()
  line = f"{type(error).__name__}: {text[0] if text else ''}"
  return line if len(line) <= limit else line[:limit - 3] + "..."


def describe_os_error(e: OSError) -> str | None:
  """A one-line description of an environmental OSError, or None for any other."""
  what = USER_ERRNOS.get(e.errno)
  if what is None:
    return None
  path = e.filename if e.filename is not None else None
  where = f": {path}" if path else ""
  if e.filename2:
    where += f" -> {e.filename2}"
  return f"{what}{where}"


def user_error_of(e: BaseException) -> UserError | None:
  """`e` as a UserError when it is one (directly, or an environmental OSError anywhere in
  its cause chain, e.g. wrapped by orbax or TensorStore), else None."""
  seen = 0
  while e is not None and seen < 10:
    if isinstance(e, UserError):
      return e
    if isinstance(e, OSError):
      text = describe_os_error(e)
      if text is not None:
        return UserError(text)
    e = e.__cause__   # explicit wrapping only: a bug raised while handling an error stays a bug
    seen += 1
  return None


def report(e: BaseException) -> int:
  """Prints the one-line form of a user or run error and returns its exit code; re-raises
  anything else (a bug keeps its traceback)."""
  if isinstance(e, RunError):
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    return 1
  user = user_error_of(e)
  if user is None:
    raise e
  print(f"error: {one_line(user)}", file=sys.stderr, flush=True)
  return 2


def _drop_closed_event_loop(unraisable, default=sys.unraisablehook):
  """sys.unraisablehook that drops TensorStore's "Event loop is closed" RuntimeErrors (its
  C++ threads finish reads of a failed orbax restore after orbax closed the asyncio loop:
  noise after the one line that says what failed) and passes everything else on."""
  if (isinstance(unraisable.exc_value, RuntimeError)
      and "Event loop is closed" in str(unraisable.exc_value)):
    return
  default(unraisable)


def cli_main(fn):
  """Decorates a CLI's main: UserError (and environmental OSError) -> one line, returns 2;
  RunError -> one line, returns 1; otherwise fn's return value (None = 0). Bugs raise."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    sys.unraisablehook = _drop_closed_event_loop
    try:
      return fn(*args, **kwargs) or 0
    except (UserError, RunError, OSError) as e:
      return report(e)
    except Exception as e:  # pylint: disable=broad-except
      if user_error_of(e) is None:
        raise
      return report(e)

  return wrapped


def exit_now(code) -> None:
  """Ends a program with `code`. A failure exits at once, skipping interpreter teardown:
  TensorStore / orbax threads can print tracebacks while the runtime shuts down after a
  failed read, burying the one line of the error."""
  code = int(code or 0)
  sys.stdout.flush()
  sys.stderr.flush()
  if code:
    _stop_children()
    os._exit(code)
  sys.exit(0)


def _stop_children(timeout: float = 5.0) -> None:
  """Terminates the multiprocessing children (data loader workers) that interpreter
  teardown would have stopped: os._exit skips it, and a worker blocked on its queue would
  outlive us."""
  import multiprocessing   # pylint: disable=g-import-not-at-top
  children = multiprocessing.active_children()
  for child in children:
    child.terminate()
  for child in children:
    child.join(timeout)


# Names that become one path component: a split, a run name, a task, a format.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def is_name(value) -> bool:
  """Whether `value` is one plain path component: letters, digits, `_ . + -`, not starting
  with `.` or `-` (so never `.` or `..`)."""
  return isinstance(value, str) and bool(NAME_PATTERN.match(value))


def check_name(value: str, what: str) -> str:
  """Returns `value` if it is a plain name (is_name); else UserError naming `what`.
  Nothing that would be joined to a directory may escape it."""
  if not is_name(value):
    raise UserError(f"{what}={value!r} is not a plain name: use letters, digits and "
                    "'_', '.', '+', '-' (starting with a letter or digit), not a path")
  return value
