"""The persistent compilation cache, on by default: a second identical run
compiles nothing (it still traces), JAX's own settings and ours-off win."""
import json
import os
import subprocess
import sys

import jax

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


@pytest.mark.parametrize('env,expected', [
    ({}, 'ours'),
    ({'RESNET_JAX_COMPILATION_CACHE': 'off'}, None),
    ({'RESNET_JAX_COMPILATION_CACHE': 'FOLDER'}, 'FOLDER'),
    ({'JAX_COMPILATION_CACHE_DIR': 'JAX_OWN'}, None),  # JAX's own wins.
])
def test_the_cache_is_ours_unless_turned_off_or_jax_is_set(
    tmp_path, monkeypatch, env, expected):
  from resnet_jax import compile_cache  # pylint: disable=import-outside-toplevel
  for name in ('JAX_COMPILATION_CACHE_DIR', compile_cache.ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('RESNET_JAX_DATA', str(tmp_path))
  for name, value in env.items():
    monkeypatch.setenv(name, str(tmp_path / value) if value != 'off' else value)
  # This process's own settings (conftest's) aside for the call, then back.
  names = ('jax_compilation_cache_dir', *compile_cache.SETTINGS)
  saved = {name: getattr(jax.config, name) for name in names}
  jax.config.update('jax_compilation_cache_dir', None)
  try:
    folder = compile_cache.enable()
    now = {name: getattr(jax.config, name) for name in names}
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
  if expected is None:
    assert folder is None and now['jax_compilation_cache_dir'] is None
    return
  want = str(tmp_path / ('jax_cache' if expected == 'ours' else expected))
  assert folder == want == now['jax_compilation_cache_dir']
  assert now['jax_persistent_cache_min_compile_time_secs'] == 0
  assert now['jax_compilation_cache_max_size'] == compile_cache.MAX_BYTES
