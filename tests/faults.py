"""`python -m resnet_jax.main ARGS...` with one fault at a chosen moment, for
the kill soak and the full-disk tests (tests/test_workdir.py).

  python tests/faults.py FAULT MOMENT COUNT SEED ARGS...

The fault strikes at the COUNT-th call (0: every call) of the MOMENT's
function; its random delays and cuts come from SEED, so a failure
reproduces:
  kill              SIGKILL within that call (an append: part of its text
                    written) or at a random moment after it
  full_disk         from that call on no file may grow (RLIMIT_FSIZE 0), as on a
                    disk that fills up; Python ignores SIGXFSZ, so a write
                    fails with EFBIG
  full_disk_during  the same, during the call only

  python tests/faults.py lock_race WORKDIR MARKS ROUNDS PAUSE

takes and releases WORKDIR's run lock ROUNDS times, racing the other
processes doing the same, with a PAUSE seconds on each side of every
release of the lock's flock (the window in which a release could let two
runs in); while it holds the lock it appends `enter PID` and `exit PID` to
MARKS (O_APPEND: whole lines in the order they happened).
"""
import functools
import importlib
import os
import random
import resource
import runpy
import signal
import sys
import threading
import time

# MOMENT: (module, function, where a kill lands).
MOMENTS = {
    'start-up': ('resnet_jax.workdir', 'RunLock._take', 'after'),  # Lock held.
    'step': ('resnet_jax.progress', 'ProgressLog.train', 'after'),
    'evaluation': ('resnet_jax.inference', 'run', 'within'),
    'save': ('resnet_jax.checkpoint', 'save', 'after'),
    'append': ('resnet_jax.workdir', 'append', 'torn'),  # To the history.
    'write': ('resnet_jax.workdir', 'write_text', 'after'),  # 1: config.json
    'plots': ('resnet_jax.reporting', 'Reporter.plot', 'after'),
    'best_effort': ('resnet_jax.reporting', 'Reporter._guard', 'after'),
}
# How long after the call a kill may land ('after'), in seconds: start-up
# spans data loading and compiling, a save runs in the background.
DELAYS = {'start-up': 3.0, 'step': 0.3, 'save': 0.3}


def die():
  os.kill(os.getpid(), signal.SIGKILL)


def set_file_size_limit(limit):
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def inject(fault: str, moment: str, count: int, rng: random.Random):
  module_name, name, where = MOMENTS[moment]
  owner = importlib.import_module(module_name)
  *parents, attr = name.split('.')
  for parent in parents:
    owner = getattr(owner, parent)
  original = getattr(owner, attr)
  calls = 0

  @functools.wraps(original)
  def wrapper(*args, **kwargs):
    nonlocal calls
    if moment == 'append' and not args[0].endswith(('.jsonl', '.csv')):
      return original(*args, **kwargs)  # Not metrics.jsonl or metrics.csv.
    calls += 1
    if count and calls != count:
      return original(*args, **kwargs)
    if fault == 'kill' and where == 'torn':  # append(path, text): a part.
      path, text = args[-2:]
      with open(path, 'a') as f:
        f.write(text[:rng.randrange(1, len(text))])
      die()
    if fault == 'kill' and where == 'within':
      threading.Timer(rng.uniform(0, 0.05), die).start()
      result = original(*args, **kwargs)
      die()  # If the timer has not struck yet: before the result is used.
    if fault == 'kill' and moment == 'start-up':  # Before the first step.
      progress = importlib.import_module('resnet_jax.progress')
      progress.ProgressLog.train = lambda *args, **kwargs: die()
    if fault == 'kill':
      result = original(*args, **kwargs)
      threading.Timer(rng.uniform(0, DELAYS.get(moment, 0.1)), die).start()
      return result
    set_file_size_limit(0)
    try:
      return original(*args, **kwargs)
    finally:
      if fault == 'full_disk_during':
        set_file_size_limit(resource.RLIM_INFINITY)

  setattr(owner, attr, wrapper)
  if fault == 'full_disk_during':  # Saves finish first: only the call fails.
    checkpoint = importlib.import_module('resnet_jax.checkpoint')
    save = checkpoint.save

    def save_and_wait(manager, *args, **kwargs):
      save(manager, *args, **kwargs)
      checkpoint.wait_until_saved(manager)

    checkpoint.save = save_and_wait


def pause_around_unlock(seconds: float):
  """Sleeps `seconds` before and after each close that releases a flock,
  whatever the release does between."""
  close = os.close

  def pausing_close(fd):
    try:
      with open(f'/proc/self/fdinfo/{fd}') as f:
        releases = 'FLOCK' in f.read()
    except OSError:
      releases = False
    if not releases:
      return close(fd)
    time.sleep(seconds)
    close(fd)
    time.sleep(seconds)
    return None

  os.close = pausing_close


def race_for_lock(workdir: str, marks: str, rounds: int, pause: float):
  """See the docstring; every other run fails, so that its release also
  removes the lock file and the workdir."""
  workdir_lib = importlib.import_module('resnet_jax.workdir')
  pause_around_unlock(pause)
  workdir_lib.jax.process_index()  # JAX's start-up, before the race.
  out = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
  os.write(out, b'ready\n')
  while not os.path.exists(marks + '.go'):  # All start together.
    time.sleep(0.01)
  for held in range(rounds):
    while True:
      lock = workdir_lib.RunLock(workdir)
      try:
        lock.__enter__()
        break
      except workdir_lib.WorkdirBusy:
        time.sleep(0.002)
    os.write(out, f'enter {os.getpid()}\n'.encode())
    time.sleep(0.01)
    os.write(out, f'exit {os.getpid()}\n'.encode())
    failed = held % 2 == 0
    # As if it had created the workdir, whoever did: a failed run's release
    # removes the lock file and the workdir.
    if failed and not lock._created:  # pylint: disable=protected-access
      lock._created = [workdir]  # pylint: disable=protected-access
    lock.__exit__(RuntimeError if failed else None, None, None)


def main():
  if sys.argv[1] == 'lock_race':
    workdir, marks, rounds, pause = sys.argv[2:]
    sys.path.insert(0, os.getcwd())
    race_for_lock(workdir, marks, int(rounds), float(pause))
    return
  fault, moment, count, seed, *args = sys.argv[1:]
  assert fault in ('kill', 'full_disk', 'full_disk_during'), fault
  sys.path.insert(0, os.getcwd())  # As `python -m` does.
  inject(fault, moment, int(count), random.Random(int(seed)))
  sys.argv = ['resnet_jax.main', *args]
  runpy.run_module('resnet_jax.main', run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
