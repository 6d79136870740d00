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


def enable_as_a_fresh_process(tmp_path, monkeypatch, env=(), config=()):
  """compile_cache.enable() with this process's cache settings (conftest's)
  back at JAX's defaults, the `env` variables and `config` settings made
  first; (its folder, the settings after it). This process's settings are
  put back after the call."""
  from resnet_jax import compile_cache  # pylint: disable=import-outside-toplevel
  names = ('jax_compilation_cache_dir', *compile_cache.SETTINGS)
  for name in (*map(str.upper, names), compile_cache.ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('RESNET_JAX_DATA', str(tmp_path))
  for name, value in dict(env).items():
    monkeypatch.setenv(name, value)
  saved = {name: getattr(jax.config, name) for name in names}
  try:
    jax.config.update('jax_compilation_cache_dir', None)
    for name, value in {**compile_cache.JAX_DEFAULTS, **dict(config)}.items():
      jax.config.update(name, value)
    folder = compile_cache.enable()
    return folder, {name: getattr(jax.config, name) for name in names}
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)


@pytest.mark.parametrize('env,expected', [
    ({}, 'ours'),
    ({'RESNET_JAX_COMPILATION_CACHE': 'off'}, None),
    ({'RESNET_JAX_COMPILATION_CACHE': 'FOLDER'}, 'FOLDER'),
    ({'JAX_COMPILATION_CACHE_DIR': 'JAX_OWN'}, None),  # JAX's own wins.
])
def test_the_cache_is_ours_unless_turned_off_or_jax_is_set(
    tmp_path, monkeypatch, env, expected):
  from resnet_jax import compile_cache  # pylint: disable=import-outside-toplevel
  env = {k: str(tmp_path / v) if v != 'off' else v for k, v in env.items()}
  folder, now = enable_as_a_fresh_process(tmp_path, monkeypatch, env)
  if expected is None:
    assert folder is None and now['jax_compilation_cache_dir'] is None
    assert all(now[k] == v for k, v in compile_cache.JAX_DEFAULTS.items())
    return
  want = str(tmp_path / ('jax_cache' if expected == 'ours' else expected))
  assert folder == want == now['jax_compilation_cache_dir']
  assert now['jax_persistent_cache_min_compile_time_secs'] == 0
  assert now['jax_compilation_cache_max_size'] == compile_cache.MAX_BYTES


USERS = {'jax_compilation_cache_max_size': 123 << 20,
         'jax_persistent_cache_min_compile_time_secs': 2.5,
         'jax_persistent_cache_min_entry_size_bytes': 4096}


@pytest.mark.parametrize('name', USERS)
@pytest.mark.parametrize('how', ['environment', 'environment, JAX default',
                                 'jax.config.update'])
def test_the_users_own_settings_stay(tmp_path, monkeypatch, name, how):
  """Each of the user's settings, set before our call, stays as it was (even
  at JAX's default value, in the environment); the others are ours."""
  from resnet_jax import compile_cache  # pylint: disable=import-outside-toplevel
  value = (compile_cache.JAX_DEFAULTS[name] if how.endswith('default')
           else USERS[name])
  # JAX reads the environment when imported: a process started with the
  # variable holds its value.
  env = {name.upper(): str(value)} if how.startswith('environment') else {}
  folder, now = enable_as_a_fresh_process(tmp_path, monkeypatch, env,
                                          {name: value})
  assert folder == str(tmp_path / 'jax_cache')
  assert now[name] == value
  for other, value in compile_cache.SETTINGS.items():
    if other != name:
      assert now[other] == value, other


# Compiles a program, then switches the cache on (twice, as two
# resnet_jax.load calls in a notebook would), then compiles another.
LATE = """
import jax, jax.numpy as jnp
from resnet_jax import compile_cache
if {compile_first}:
  jax.jit(lambda x: x + 1)(jnp.ones(3))
compile_cache.enable()
compile_cache.enable()
jax.jit(lambda x: x * 3)(jnp.ones(5))
"""


@pytest.mark.parametrize('compile_first', [True, False])
def test_switching_the_cache_on_late_warns_once(tmp_path, compile_first):
  clean = {k: v for k, v in os.environ.items()
           if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE',
                                'RESNET_JAX_COMPILATION_CACHE'))}
  result = subprocess.run(
      [sys.executable, '-c', LATE.format(compile_first=compile_first)],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**clean, 'RESNET_JAX_DATA': str(tmp_path)})
  assert result.returncode == 0, result.stderr
  warnings = [line for line in result.stderr.splitlines()
              if line.startswith('warning: ')]
  if not compile_first:
    assert warnings == []
    return
  assert warnings == [
      f'warning: the compilation cache ({tmp_path}/jax_cache) was switched on '
      'after this process had compiled programs, which it will not hold: call '
      'from resnet_jax import compile_cache; compile_cache.enable() before '
      'any other JAX code, or set JAX_COMPILATION_CACHE_DIR'], result.stderr
  assert os.listdir(tmp_path / 'jax_cache')  # Later programs are cached.
