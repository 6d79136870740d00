"""The persistent compilation cache, on by default: a second identical run
compiles nothing (it still traces), JAX's own settings and ours-off win."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli_args, tiny_config

# Runs resnet_jax.main and prints, as its last line, how many programs it
# compiled and how many of them came from the persistent cache.
COUNTING_MAIN = '''
import atexit, collections, json, runpy, sys
from jax import monitoring
counts = collections.Counter()
monitoring.register_event_listener(lambda event, **_: counts.update([event]))
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: counts.update([event]))
atexit.register(lambda: print(json.dumps({
    'compiled': counts['/jax/core/compile/backend_compile_duration'],
    'from_cache': counts['/jax/compilation_cache/cache_hits']})))
sys.argv = ['resnet_jax.main'] + sys.argv[1:]
runpy.run_module('resnet_jax.main', run_name='__main__')
'''


def run_counting(args, env):
  """(exit code, {'compiled', 'from_cache'}) of a run in a clean environment:
  the tests' own cache settings (conftest) removed."""
  clean = {k: v for k, v in os.environ.items()
           if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE',
                                'RESNET_JAX_COMPILATION_CACHE'))}
  result = subprocess.run([sys.executable, '-c', COUNTING_MAIN, *args[3:]],
                          capture_output=True, text=True, cwd=REPO,
                          env={**clean, **env}, timeout=600)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_identical_run_compiles_nothing(tmp_path):
  config = tiny_config(**{'train.steps': 2, 'train.eval_every': 2,
                          'train.warmup_steps': 1})
  env = {'RESNET_JAX_DATA': str(tmp_path / 'cache')}
  first = run_counting(cli_args(config, tmp_path / 'a'), env)
  second = run_counting(cli_args(config, tmp_path / 'b'), env)
  assert first['compiled'] > 5 and first['from_cache'] == 0
  # Every program of the second run (init, train step, evaluation, ...)
  # came from the cache.
  assert second['compiled'] == second['from_cache'] == first['compiled']
  assert os.listdir(tmp_path / 'cache' / 'jax_cache')

  # Off: nothing written, nothing read.
  off = run_counting(cli_args(config, tmp_path / 'c'),
                     {**env, 'RESNET_JAX_DATA': str(tmp_path / 'cache2'),
                      'RESNET_JAX_COMPILATION_CACHE': 'off'})
  assert off['from_cache'] == 0 and not (tmp_path / 'cache2').exists()
  # JAX's own variable wins: its folder, not ours.
  own = run_counting(cli_args(config, tmp_path / 'd'),
                     {**env, 'RESNET_JAX_DATA': str(tmp_path / 'cache3'),
                      'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'jax_own')})
  assert own['from_cache'] == 0 and os.listdir(tmp_path / 'jax_own')
  assert not (tmp_path / 'cache3').exists()
