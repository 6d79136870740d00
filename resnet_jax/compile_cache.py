"""JAX's persistent compilation cache, on by default.

A run's programs (the train and eval steps, the initializers) are compiled
once per machine and loaded from disk by every later run of the same program:
on a GPU that also keeps XLA's autotuning results (JAX stores them beside,
jax_persistent_cache_enable_xla_caches), which is most of a GPU's compile
time. The cache lives in CACHE/jax_cache, CACHE being $RESNET_JAX_DATA or
~/.cache/resnet_jax (the downloaded data's folder), at most MAX_BYTES, the
least recently used entries evicted first.

The user's JAX settings win, each of them: with $JAX_COMPILATION_CACHE_DIR
(or jax_compilation_cache_dir set in the process) this module changes
nothing, and a size limit or threshold of the user's (in the environment,
or set with jax.config.update before enable) stays as it is.
$RESNET_JAX_COMPILATION_CACHE=off turns ours off; set to a folder, it moves it.
"""
import os
import sys

import jax

from resnet_jax.data import download

ENV = 'RESNET_JAX_COMPILATION_CACHE'
OFF = ('0', 'off', 'false', 'no')
MAX_BYTES = 4 << 30
# Every program, however quick to compile: the eval step and the
# initializers compile in under JAX's default threshold of 1 s on a CPU, yet
# they add up to seconds before the first step.
SETTINGS = {'jax_persistent_cache_min_compile_time_secs': 0.0,
            'jax_persistent_cache_min_entry_size_bytes': 0,
            'jax_compilation_cache_max_size': MAX_BYTES}
# JAX's defaults (jax/_src/config.py): a value other than these, or one in
# the environment (JAX_..., read when JAX is imported), is the user's.
JAX_DEFAULTS = {'jax_persistent_cache_min_compile_time_secs': 1.0,
                'jax_persistent_cache_min_entry_size_bytes': 0,
                'jax_compilation_cache_max_size': -1}


def enable() -> str | None:
  """Switches the cache on for this process; returns its folder (None: off,
  or JAX's own settings in charge)."""
  if (os.environ.get('JAX_COMPILATION_CACHE_DIR')
      or jax.config.jax_compilation_cache_dir):
    return None
  setting = os.environ.get(ENV, '')
  if setting.lower() in OFF:
    return None
  folder = setting or os.path.join(download.cache_dir(), 'jax_cache')
  if compiled_already():  # Once: from now on the folder is set.
    print(f'warning: the compilation cache ({folder}) was switched on after '
          'this process had compiled programs, which it will not hold: call '
          'from resnet_jax import compile_cache; compile_cache.enable() '
          'before any other JAX code, or set JAX_COMPILATION_CACHE_DIR',
          file=sys.stderr)
  jax.config.update('jax_compilation_cache_dir', folder)
  for name, value in SETTINGS.items():
    if not user_set(name):
      jax.config.update(name, value)
  return folder


def user_set(name: str) -> bool:
  return (name.upper() in os.environ
          or getattr(jax.config, name) != JAX_DEFAULTS[name])


def compiled_already() -> bool:
  """Whether this process has compiled a program: JAX looks at the cache's
  settings at its first compile (no public API says so; False if it moves)."""
  from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel
  return bool(getattr(compilation_cache, '_cache_checked', False))
