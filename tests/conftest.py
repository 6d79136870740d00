"""Shared fixtures: tiny configs and generated CIFAR-10 binary folders."""
import hashlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from resnet_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'cifar10',
                         'cifar-10-batches-bin')
# JAX's persistent compilation cache, one fresh folder per test run: the tests
# compile the same tiny programs over and over, in this process, in xdist's
# workers and in the command-line subprocesses (all inherit the environment),
# and compiling is most of the suite's CPU time. Never reused across runs, so
# a stale or foreign entry cannot hide a bug.
CACHE_SETTINGS = {'jax_persistent_cache_min_compile_time_secs': 0,
                  'jax_persistent_cache_min_entry_size_bytes': 0}
# Tests only, in every process (XLA_FLAGS, inherited): XLA:CPU compiles the
# tiny test programs at -O0, which cuts the suite's CPU time by a fifth. The
# product compiles at XLA's default -O2 (a few results differ by a float32
# ulp); tests compare runs with each other, each under the same flags. Not on
# an accelerator (fast_compile_applies).
FAST_COMPILE = ('--xla_backend_optimization_level=0 '
                '--xla_llvm_disable_expensive_passes=true')


def accelerator_installed() -> bool:
  """A PJRT plugin (jax_plugins: CUDA, ROCm) or libtpu, found as jax finds
  them but without starting a backend: the tests would run there."""
  spec = importlib.util.find_spec('jax_plugins')
  return bool(
      spec and any(pkgutil.iter_modules(spec.submodule_search_locations))
      or importlib.metadata.entry_points(group='jax_plugins')
      or importlib.util.find_spec('libtpu'))


def fast_compile_applies(environ=os.environ) -> bool:
  """FAST_COMPILE is for XLA:CPU: on an accelerator -O0 would slow its
  kernels, and the tests there check the program a run gets (gpu_check)."""
  platforms = environ.get('JAX_PLATFORMS', '')
  return platforms == 'cpu' or not (platforms or accelerator_installed())


def fake_devices(count: int) -> dict:
  """The environment of a child that sees `count` CPU devices: this
  process's XLA_FLAGS (with FAST_COMPILE where pytest_configure added it)
  and the device count."""
  flags = os.environ.get('XLA_FLAGS', '')
  return {'XLA_FLAGS': f'{flags} --xla_force_host_platform_device_count={count}'
                       .strip()}


def pytest_configure(config):
  del config
  if not os.environ.get('PYTEST_XDIST_WORKER'):  # The controller, or no xdist.
    os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
        prefix='resnet_jax_test_jit_cache_')
    if fast_compile_applies():
      os.environ['XLA_FLAGS'] = (
          f'{os.environ.get("XLA_FLAGS", "")} {FAST_COMPILE}'.strip())
  import jax  # pylint: disable=import-outside-toplevel
  settings = {'jax_compilation_cache_dir': os.environ['JAX_COMPILATION_CACHE_DIR'],
              **CACHE_SETTINGS}
  for name, value in settings.items():  # This process, then its children.
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)


def pytest_unconfigure(config):
  del config
  if not os.environ.get('PYTEST_XDIST_WORKER'):
    shutil.rmtree(os.environ.pop('JAX_COMPILATION_CACHE_DIR', ''),
                  ignore_errors=True)


def require_real_data():
  """Skips a test without the real CIFAR-10 beside the repo (REAL_DATA),
  or fails it where RESNET_JAX_REQUIRE_DATA is set (CI)."""
  if not os.path.isdir(REAL_DATA):
    message = f'real CIFAR-10 not found at {REAL_DATA}'
    if os.environ.get('RESNET_JAX_REQUIRE_DATA'):
      pytest.fail(message + ' (RESNET_JAX_REQUIRE_DATA is set)')
    pytest.skip(message)


def tiny_config(**overrides):
  """ResNet-8 on 16x16 synthetic data: compiles and runs in seconds."""
  c = config_lib.base_config()
  c.data.source = 'synthetic'
  c.data.image_size = 16
  c.data.synthetic_examples = 160
  c.data.val_fraction = 0.2
  c.model.num_layers = 1
  c.train.batch_size = 16
  c.train.steps = 12
  c.train.warmup_steps = 2
  c.train.eval_every = 6
  c.train.log_every = 3
  c.train.eval_batch_size = 20
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
  """A finished tiny_config() run, shared by the command-line tests."""
  from resnet_jax import train  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp('trained')
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


def snapshot(folder):
  """Every file under `folder` with its content hash and mtime; the run lock
  by its content alone (a refused run takes and releases it)."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[path] = (hashlib.sha256(f.read()).hexdigest(),
                     None if name == '.lock' else os.stat(path).st_mtime_ns)
  return out


def cli_args(config, workdir, *extra):
  """The command line that gives `config` (relative to the base config)."""
  args = [sys.executable, '-m', 'resnet_jax.main',
          f'--config={REPO}/configs/resnet_conv.py', f'--workdir={workdir}']
  base = config_lib.base_config().to_dict()
  for section, values in config.to_dict().items():
    if not isinstance(values, dict):
      if values != base[section]:
        args.append(f'--config.{section}={values}')
      continue
    for key, value in values.items():
      if value != base[section][key]:
        args.append(f'--config.{section}.{key}={value}')
  return args + list(extra)


def run_cli(args, env=None, timeout=600):
  return subprocess.run(args, capture_output=True, text=True, cwd=REPO,
                        timeout=timeout, env={**os.environ, **(env or {})})


def write_cifar_bin(path, images, labels, coarse_labels=None):
  """Writes records in the official layout: label byte, then R, G, B planes
  (CIFAR-100: the coarse label byte before the fine one)."""
  planes = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(labels), -1)
  label_bytes = [labels] if coarse_labels is None else [coarse_labels, labels]
  records = np.concatenate(
      [np.asarray(label_bytes, np.uint8).T, planes], 1)
  records.tofile(path)


def random_cifar(n, seed=0, num_classes=10):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
          rng.integers(0, num_classes, n).astype(np.int32))


@pytest.fixture
def cifar_dir(tmp_path):
  """A CIFAR-10 binary folder with odd record counts: 7 + 5 + 1 train, 3 test."""
  folder = tmp_path / 'cifar-10-batches-bin'
  folder.mkdir()
  arrays = {}
  for i, n in enumerate((7, 5, 1), start=1):
    arrays[f'data_batch_{i}.bin'] = random_cifar(n, seed=i)
  arrays['test_batch.bin'] = random_cifar(3, seed=99)
  for name, (images, labels) in arrays.items():
    write_cifar_bin(folder / name, images, labels)
  (folder / 'batches.meta.txt').write_text(
      '\n'.join(f'name{k}' for k in range(10)) + '\n')
  return folder, arrays
