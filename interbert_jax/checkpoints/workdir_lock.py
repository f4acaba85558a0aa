"""One run per workdir: `<workdir>/run.lock`, held by the trainer's process 0 for the run.

Two trainers on one workdir would both train, write every metrics row twice and race each
other's checkpoint saves until neither checkpoint survives. The second one is refused
(UserError, exit 2) with the holder's host, pid and start time.

- Local and network file systems: `fcntl.flock` on the lock file. The kernel drops the
  lock when its process dies, however it dies, so a lock left by a killed run (`kill -9`,
  a preempted node) is stale by construction: it is taken over with a warning naming the
  old holder. A clean exit empties the file (it is never deleted: deleting a flock file
  lets a waiting opener lock the orphaned inode).
- Object stores (`gs://`) and file systems without flock: the file itself is the lock,
  with a heartbeat the holder rewrites every HEARTBEAT_SECONDS. A lock whose holder is a
  dead pid on this host, or whose heartbeat is older than STALE_SECONDS, is stale.
"""
import datetime
import errno
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath

from interbert_jax import errors

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 300.0


class WorkdirBusyError(errors.UserError):
  """Another live trainer holds the workdir."""


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
          f"{holder.get('started', '?')}")


def _parse(text: str) -> dict:
  try:
    holder = json.loads(text) if text.strip() else {}
  except json.JSONDecodeError:
    holder = {"unreadable": text[:80]}
  return holder if isinstance(holder, dict) else {}


class WorkdirLock:
  """`with WorkdirLock(workdir): ...` or acquire() / release()."""

  def __init__(self, workdir: str, *, use_flock: bool | None = None,
               heartbeat_seconds: float = HEARTBEAT_SECONDS,
               stale_seconds: float = STALE_SECONDS):
    self.path = epath.Path(workdir) / LOCK_FILE
    self.use_flock = ("://" not in str(workdir)) if use_flock is None else use_flock
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_seconds = stale_seconds
    self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(),
                   "token": uuid.uuid4().hex}
    self._fd = None
    self._stop = threading.Event()
    self._thread = None

  # ---------------------------------------------------------------------------- acquire
  def acquire(self) -> "WorkdirLock":
    if self.use_flock:
      try:
        self._acquire_flock()
        return self
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          raise
        self._close_fd()
        logging.warning("%s: this file system has no flock (%s); using a heartbeat lock",
                        self.path, e.strerror)
    self._acquire_heartbeat()
    return self

  def _refuse(self, holder: dict):
    raise WorkdirBusyError(
        f"--workdir={self.path.parent} is in use by another trainer ({_describe(holder)}; "
        f"lock file {self.path}): stop that run first, or use another --workdir")

  def _acquire_flock(self):
    import fcntl   # POSIX only; object stores take the heartbeat path
    self._fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _parse(os.pread(self._fd, 4096, 0).decode("utf-8", "replace"))
      self._close_fd()
      self._refuse(holder)
    try:
      previous = _parse(os.pread(self._fd, 4096, 0).decode("utf-8", "replace"))
      if previous:
        logging.warning("%s: taking over a stale lock (%s): that trainer is no longer "
                        "running", self.path, _describe(previous))
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, (json.dumps(self.holder) + "\n").encode(), 0)
      os.fsync(self._fd)
    except BaseException:
      self._close_fd()   # not held when its holder could not be written
      raise

  def _write_heartbeat(self):
    self.holder["heartbeat"] = time.time()
    self.path.write_text(json.dumps(self.holder) + "\n")

  def _acquire_heartbeat(self):
    if self.path.exists():
      holder = _parse(self.path.read_text())
      if holder and not holder.get("released"):
        same_host = holder.get("host") == self.holder["host"]
        dead = same_host and isinstance(holder.get("pid"), int) and not _pid_alive(
            holder["pid"])
        age = time.time() - float(holder.get("heartbeat", 0) or 0)
        # A dead pid alone is not enough: containers can share a host name, not pids.
        if not (dead and age > 2 * self.heartbeat_seconds) and age < self.stale_seconds:
          self._refuse(holder)
        logging.warning("%s: taking over a stale lock (%s): %s", self.path,
                        _describe(holder), "its process is gone" if dead
                        else f"no heartbeat for {age:.0f} s")
    self._write_heartbeat()
    # Two starters at the same moment: the later write wins; the other one sees it.
    time.sleep(min(1.0, self.heartbeat_seconds))
    if _parse(self.path.read_text()).get("token") != self.holder["token"]:
      self._refuse(_parse(self.path.read_text()))
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()

  def _beat(self):
    while not self._stop.wait(self.heartbeat_seconds):
      try:
        token = _parse(self.path.read_text()).get("token")
        if token != self.holder["token"]:
          logging.error("%s: another trainer took this workdir's lock over (this run was "
                        "silent for over %.0f s): stop one of the two runs", self.path,
                        self.stale_seconds)
          return
        self._write_heartbeat()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("%s: heartbeat not written (%s)", self.path, e)

  # ---------------------------------------------------------------------------- release
  def _close_fd(self):
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  @staticmethod
  def held_by_other(workdir: str) -> dict | None:
    """The holder of a local workdir's lock when a live process holds it, else None (a
    probe: takes and drops the flock). Object stores: None (the trainer decides)."""
    path = os.path.join(str(workdir), LOCK_FILE)
    if "://" in str(workdir) or not os.path.exists(path):
      return None
    import fcntl
    fd = os.open(path, os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
      return None
    except BlockingIOError:
      return _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace")) or {}
    finally:
      os.close(fd)   # drops the probe's lock too

  def release(self) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)   # a clean exit: empty, and unlocked by the close
      self._close_fd()
    elif self._thread is not None:
      self._stop.set()
      self._thread.join(timeout=5)
      self._thread = None
      try:
        self.path.write_text(json.dumps(dict(self.holder, released=_now())) + "\n")
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("%s: not released (%s); the next run takes it over once stale",
                        self.path, e)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
