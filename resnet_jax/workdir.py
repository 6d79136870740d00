"""One writer per workdir, and files that a crash or a full disk cannot tear.

RunLock: a training run holds WORKDIR/.lock with an OS lock (flock), which
the kernel releases when the holder dies, so a killed run never blocks the
next one. Shared filesystems do not always honour flock across hosts, so the
file also carries the holder's host, pid and a heartbeat: a run on another
host refuses while the heartbeat is fresh. The record is one fixed-size
write, never seen torn. Where flock fails (some network filesystems) the
record alone holds: a run writes it, waits SETTLE_S and reads it back, so of
two runs that start at once only the later writer goes on. A release clears
or removes the file while it still holds the flock, and a run that took the
flock checks that the path still names the file it locked. A multi-host run
takes one lock, on process 0, and every process stops with its error.

atomic_file and append: every file a run writes is either replaced whole (a
temporary file renamed into place) or appended to, cut back to what it held
if the append fails. read_jsonl reads what is whole and sets the rest aside.
"""
import contextlib
import errno
import fcntl
import glob
import json
import os
import secrets
import socket
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax.errors import UserError

LOCK_FILE = '.lock'
HEARTBEAT_EVERY_S = 15.0
# Another host's lock counts while its heartbeat is younger than this; a
# killed holder's then stops blocking (its host's clock must roughly agree).
HEARTBEAT_STALE_S = 120.0
# A temporary file this old was left by a crashed writer: the next write of
# the same file removes it.
STALE_TEMP_S = 600.0


class WorkdirBusy(UserError):
  """Another training run holds the workdir."""


class WriteError(UserError):
  """A file could not be written (a full disk, a quota); it is unchanged."""

  def __init__(self, path: str, error: OSError):
    self.what = (f'writing {path} failed: {type(error).__name__}: '
                 f'{error.strerror or error}')
    super().__init__(f'{self.what}; it holds what it held before: free some '
                     'space and rerun the same command')


# The lock --------------------------------------------------------------------

# The holder's record is one write of this many bytes (its JSON padded with
# spaces), so a reader sees the old record or the new one, never a mix.
RECORD_BYTES = 1024
# Without flock, a run that wrote its record waits this long and reads it
# back: another run that read "no holder" at the same moment has written
# after it by then, and the last writer alone goes on.
SETTLE_S = 0.5
# A record unreadable for this long: one that changes meanwhile is being
# written (held); one that stays the same is what a dead writer left (none).
TORN_WAIT_S = 1.0
# Tries at taking the path while other runs remove it as they release it.
TAKE_ATTEMPTS = 20
# Process 0's error, sent to the other processes of a multi-host run.
MESSAGE_BYTES = 2048


class WorkdirUnusable(UserError):
  """The workdir cannot hold the lock (read-only, no permission, a file)."""

  def __init__(self, path: str, error: OSError):
    super().__init__(
        f'cannot take the run lock {path}: {type(error).__name__}: '
        f'{error.strerror or error}; choose a --workdir this user can create '
        'and write')


def missing_folders(path: str) -> list[str]:
  """`path` and those of its parents that do not exist, deepest first."""
  missing = []
  while path and not os.path.isdir(path):
    missing.append(path)
    path = os.path.dirname(path)
  return missing


class RunLock:
  """`with RunLock(workdir):` a training run holds the workdir; on every
  process, WorkdirBusy if another run does, WorkdirUnusable if the lock
  cannot be written."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None
    self._created = []  # Folders this lock made: the workdir, its parents.
    self._record = None  # Host, pid, since, token; written with a heartbeat.
    self._stop = threading.Event()
    self._heartbeat = None

  def __enter__(self):
    error = None
    if jax.process_index() == 0:
      try:
        self._take()
      except UserError as e:  # WorkdirBusy, or WriteError on a full disk.
        error = e
      except OSError as e:  # Read-only, no permission, a file on the path.
        error = WorkdirUnusable(self.path, e)
      except Exception as e:  # pylint: disable=broad-except
        error = e  # A bug: raised as it is, once the others know.
    if jax.process_count() > 1:  # The other processes stop with process 0,
      # with its message: none waits for a process that has failed.
      message = _broadcast_message(str(error) or repr(error) if error else '')
      if message and error is None:
        error = UserError(message)
    if error:
      raise error
    return self

  def __exit__(self, exc_type, *exc):
    if self._fd is None:
      return
    self._stop.set()
    self._heartbeat.join()
    workdir = os.path.dirname(self.path)
    # Everything while the flock is held: a run that opened .lock meanwhile
    # either finds it held or, once it is released, finds that the path no
    # longer names the file it locked (_open_locked), never a second holder.
    try:
      with contextlib.suppress(OSError):
        if exc_type and self._created and os.listdir(workdir) == [LOCK_FILE]:
          # A run that failed before writing anything (a bad data.dir)
          # leaves no workdir behind, nor the runs/ folder it made for it.
          os.unlink(self.path)
          for folder in self._created:  # Deepest first; stops at a non-empty one.
            os.rmdir(folder)
        else:
          os.ftruncate(self._fd, 0)  # Released: no host needs to wait.
    finally:
      os.close(self._fd)  # Releases the flock.
      self._fd = None

  def _take(self):
    fd, flocked = self._open_locked()
    try:
      holder = read_holder(fd)
      if holder and still_holds(holder, flocked):
        raise WorkdirBusy(self._busy(holder))
      self._record = {'host': socket.gethostname(), 'pid': os.getpid(),
                      'since': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                      'token': secrets.token_hex(8)}
      try:
        self._write_record(fd)
      except OSError as e:
        raise WriteError(self.path, e) from None
      if not flocked:  # Read, then write: a run that did the same at once
        time.sleep(SETTLE_S)  # has overwritten ours by now.
        holder = read_holder(fd)
        if not holder or holder.get('token') != self._record['token']:
          raise WorkdirBusy(self._busy(holder))
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                       name='workdir-heartbeat')
    self._heartbeat.start()

  def _open_locked(self):
    """(fd of the lock file, whether flock holds it); WorkdirBusy if another
    process on this host holds it."""
    workdir = os.path.dirname(self.path)
    for attempt in range(TAKE_ATTEMPTS):
      self._created = missing_folders(workdir)
      os.makedirs(workdir, exist_ok=True)
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
      except FileNotFoundError:  # A failed run's release removed the
        if attempt == TAKE_ATTEMPTS - 1:  # workdir it had created: create
          raise  # it again.
        continue
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        try:
          holder = read_holder(fd)
        finally:
          os.close(fd)
        raise WorkdirBusy(self._busy(holder)) from None
      except OSError:  # No flock on this filesystem: the heartbeat alone.
        return fd, False
      if _names(self.path, fd):
        return fd, True
      # Its holder removed it while releasing, after we opened it: our
      # flock is on a file nobody else will open. Take the path afresh.
      os.close(fd)
    raise WorkdirBusy(self._busy(None))  # Other runs kept taking it.

  def _write_record(self, fd):
    data = json.dumps({**self._record, 'heartbeat': time.time()}).encode()
    if os.pwrite(fd, data.ljust(RECORD_BYTES), 0) != RECORD_BYTES:
      raise OSError(errno.ENOSPC, 'the record was written in part')

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_EVERY_S):
      with contextlib.suppress(OSError):  # A missed beat only ages it.
        self._write_record(self._fd)

  def _busy(self, holder) -> str:
    workdir = os.path.dirname(self.path)
    if not holder:
      who = f'another process (it holds {self.path})'
    elif holder.get('torn'):
      who = f'another process (it is rewriting {self.path})'
    else:
      age = time.time() - holder.get('heartbeat', 0)
      who = (f'host {holder.get("host")}, pid {holder.get("pid")}, since '
             f'{holder.get("since")} (heartbeat {age:.0f} s ago)')
    return (f'{workdir} is in use by another training run: {who}; wait for it '
            'to end or stop it (SIGTERM saves a checkpoint), or choose another '
            '--workdir. A killed run never holds it: on its host at once, from '
            f'another host once its heartbeat is {HEARTBEAT_STALE_S:.0f} s old')


def _names(path: str, fd) -> bool:
  """Whether `path` still names the file open as `fd`."""
  try:
    named = os.stat(path)
  except FileNotFoundError:
    return False
  opened = os.fstat(fd)
  return (named.st_ino, named.st_dev) == (opened.st_ino, opened.st_dev)


def _broadcast_message(message: str) -> str:
  """Process 0's `message` ('' for none), on every process."""
  data = np.zeros(MESSAGE_BYTES, np.uint8)
  encoded = message.encode()[:MESSAGE_BYTES]
  data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  received = np.asarray(multihost_utils.broadcast_one_to_all(data))
  return bytes(received).rstrip(b'\0').decode(errors='replace')


def read_holder(fd) -> dict | None:
  """The lock file's record, or None: empty, JSON but no record, or bytes
  that stay the same and unreadable for TORN_WAIT_S (a dead writer's). A
  record that changes without ever being whole is being written:
  {'torn': True}, which holds."""
  seen = set()
  deadline = time.time() + TORN_WAIT_S
  while True:
    data = os.pread(fd, RECORD_BYTES, 0)
    if not data.strip():
      return None
    try:
      record = json.loads(data)
      return record if isinstance(record, dict) else None
    except ValueError:
      seen.add(data)
    if time.time() > deadline:
      return None if len(seen) == 1 else {'torn': True}
    time.sleep(0.02)


def still_holds(holder: dict, flocked: bool) -> bool:
  """Whether the run in `holder` holds the workdir, though flock let us in."""
  if holder.get('torn'):
    return True
  if holder.get('host') != socket.gethostname():
    return time.time() - holder.get('heartbeat', 0) < HEARTBEAT_STALE_S
  if flocked:  # On its own host the kernel knows: it ended.
    return False
  try:
    os.kill(holder['pid'], 0)
  except ProcessLookupError:
    return False
  except (OSError, KeyError, TypeError):
    pass
  return time.time() - holder.get('heartbeat', 0) < HEARTBEAT_STALE_S


# Writes that are whole or not at all ----------------------------------------


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'w', **open_args):
  """A file object whose content replaces `path` when the block ends without
  an error: a reader, a crash or a full disk sees the old file or the new
  one, never a part. On an error the temporary file is removed."""
  folder, name = os.path.split(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  remove_stale_temps(folder, name)
  # A unique name: two writers of one file at once never share it.
  temp = os.path.join(folder, f'.{name}.{secrets.token_hex(4)}.tmp')
  fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, mode, **open_args) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())  # The data is on disk before the rename is.
    os.replace(temp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(temp)
    raise


def remove_stale_temps(folder: str, name: str):
  """Removes what crashed writers of `name` left (older than STALE_TEMP_S)."""
  for temp in glob.glob(os.path.join(glob.escape(folder),
                                     f'.{glob.escape(name)}.*.tmp')):
    with contextlib.suppress(OSError):
      if time.time() - os.path.getmtime(temp) > STALE_TEMP_S:
        os.unlink(temp)


def write_text(path: str, text: str):
  """Replaces `path` with `text` atomically; WriteError if it cannot."""
  try:
    with atomic_file(path) as f:
      f.write(text)
  except OSError as e:
    raise WriteError(path, e) from None


def save_figure(fig, path: str):
  """A matplotlib figure to `path` (its extension gives the format),
  atomically; WriteError if it cannot."""
  try:
    with atomic_file(path, 'wb') as f:
      fig.savefig(f, format=os.path.splitext(path)[1][1:] or 'png')
  except OSError as e:
    raise WriteError(path, e) from None
  return path


def append(path: str, text: str | bytes):
  """Appends `text` to `path`; if it cannot all be written, the file is cut
  back to what it held and WriteError is raised."""
  data = memoryview(text.encode() if isinstance(text, str) else text)
  try:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    size = os.fstat(fd).st_size
  except OSError as e:
    raise WriteError(path, e) from None
  try:
    while data:
      data = data[os.write(fd, data):]
  except OSError as e:
    with contextlib.suppress(OSError):
      os.ftruncate(fd, size)  # Shrinking needs no space.
    raise WriteError(path, e) from None
  finally:
    os.close(fd)


def read_jsonl(path: str) -> tuple[list, int]:
  """(records, bytes set aside) of a JSON-lines file: a line that is not a
  JSON object, such as a last line torn by a crash or a full disk, is left
  out and counted."""
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  records, set_aside = [], 0
  for line in lines:
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if isinstance(record, dict):
      records.append(record)
    else:
      set_aside += len(line)
  return records, set_aside
