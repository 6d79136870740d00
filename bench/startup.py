"""Where a run's start-up goes: a wall-clock timeline of resnet_jax.main.

    python bench/startup.py [--out=FILE] -- MAIN_FLAGS  # bench/README.md

Runs resnet_jax.main in this process with its phases wrapped by timers
(the `timed` list in main) and prints each phase's end (seconds since the
process started) and length. Run it twice: the second run shows a warm
compilation cache (resnet_jax/compile_cache.py).
"""
import time

START = time.perf_counter()  # pylint: disable=wrong-import-position
import functools
import runpy
import sys

import common
TIMELINE = []


def stamp(what, seconds=None):
  TIMELINE.append({'at_s': round(time.perf_counter() - START, 3),
                   'what': what,
                   'seconds': None if seconds is None else round(seconds, 3)})


def timed(module, name, what=None):
  """Wraps module.name so that each call is stamped with its length."""
  fn = getattr(module, name)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    begin = time.perf_counter()
    result = fn(*args, **kwargs)
    stamp(what or f'{module.__name__.split(".")[-1]}.{name}',
          time.perf_counter() - begin)
    return result
  setattr(module, name, wrapper)


def main():
  argv = sys.argv[1:]
  out = None
  if argv[:1] and argv[0].startswith('--out='):
    out, argv = argv[0].split('=', 1)[1], argv[1:]
  argv = argv[1:] if argv[:1] == ['--'] else argv
  import jax  # pylint: disable=import-outside-toplevel
  stamp('import jax')
  from resnet_jax import checkpoint, data, inference, plots, train  # pylint: disable=import-outside-toplevel
  from resnet_jax import train_state  # pylint: disable=import-outside-toplevel
  stamp('import resnet_jax')
  for module, names in ((data, ('load_splits', 'channel_stats')),
                        (train_state, ('create_train_state',)),
                        (train, ('make_inputs',)),
                        (checkpoint, ('restore_or_init', 'save',
                                      'wait_until_saved')),
                        (plots, ('plot_history', 'plot_schedule')),
                        (inference, ('run',))):
    for name in names:
      timed(module, name)
  make_train_fn = train.make_train_fn

  def make_timed_train_fn(*args, **kwargs):
    train_fn, first = make_train_fn(*args, **kwargs), [True]

    def timed_train_fn(*a, **k):
      if not first[0]:
        return train_fn(*a, **k)
      first[0], begin = False, time.perf_counter()
      result = jax.block_until_ready(train_fn(*a, **k))
      stamp('first train step (trace, compile or cache, run)',
            time.perf_counter() - begin)
      return result
    return timed_train_fn
  train.make_train_fn = make_timed_train_fn

  sys.argv = ['resnet_jax.main', *argv]
  try:
    runpy.run_module('resnet_jax.main', run_name='__main__')
  except SystemExit as e:
    code = e.code or 0
  else:
    code = 0
  stamp('end')
  for row in TIMELINE:
    length = '' if row['seconds'] is None else f'{row["seconds"]:8.2f} s'
    print(f'{row["at_s"]:8.2f} s  {length:10s}  {row["what"]}')
  first = next((r['at_s'] for r in TIMELINE if r['what'].startswith('first')),
               None)
  print(f'process start to the end of the first step: {first} s; exit '
        f'{code}')
  if out:
    common.write_json(out, {'command': argv, 'timeline': TIMELINE,
                            'first_step_done_s': first, 'exit': code})
  sys.exit(code)


if __name__ == '__main__':
  main()
