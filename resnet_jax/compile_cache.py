"""JAX's persistent compilation cache, on by default.

A run's programs (the train and eval steps, the initializers) are compiled
once per machine and loaded from disk by every later run of the same program:
on a GPU that also keeps XLA's autotuning results (JAX stores them beside,
jax_persistent_cache_enable_xla_caches), which is most of a GPU's compile
time. The cache lives in CACHE/jax_cache, CACHE being $RESNET_JAX_DATA or
~/.cache/resnet_jax (the downloaded data's folder), at most MAX_BYTES, the
least recently used entries evicted first.

JAX's own settings win: with $JAX_COMPILATION_CACHE_DIR (or
jax_compilation_cache_dir set in the process) this module changes nothing.
$RESNET_JAX_COMPILATION_CACHE=off turns ours off; set to a folder, it moves it.
"""
import os

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
  jax.config.update('jax_compilation_cache_dir', folder)
  for name, value in SETTINGS.items():
    jax.config.update(name, value)
  return folder
