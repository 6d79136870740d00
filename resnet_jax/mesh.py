"""The device mesh, how host arrays are placed on it, what it needs of the
config, and the line a run opens with to say what it trains on.

Axes ('members', 'data'): by default the batch is split along 'data' and
every device holds every member; with train.shard_members the member axis is
split instead and each device trains whole members.
"""
import importlib.metadata
import os
import sys

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import config as config_lib
from resnet_jax.errors import ConfigError


def create_mesh(shard_members: bool = False) -> jax.sharding.Mesh:
  """A mesh over every device: (1, devices), or (devices, 1) with
  `shard_members`."""
  devices = jax.device_count()
  shape = (devices, 1) if shard_members else (1, devices)
  # Auto axes: XLA propagates shardings from the constraints we place.
  return jax.make_mesh(shape, ('members', 'data'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def announce_runtime():
  """Process 0 prints what the run trains on, e.g. `training on 1 x cpu
  (jax 0.12.0), 1 process`, and a warning when a GPU build of jax is
  installed but JAX fell back to the CPU (a driver too old, no GPU visible),
  which it otherwise does without a word."""
  if jax.process_index() != 0:
    return
  print(runtime_line(), flush=True)
  warning = gpu_fallback_warning()
  if warning:
    print(warning, file=sys.stderr, flush=True)


def runtime_line() -> str:
  device = jax.devices()[0]
  backend = jax.default_backend()
  kind = device.device_kind
  what = (f'{kind} (jax {jax.__version__})' if kind.lower() == backend
          else f'{kind} ({backend}, jax {jax.__version__})')
  processes = jax.process_count()
  return (f'training on {jax.device_count()} x {what}, {processes} '
          f'process{"es" if processes > 1 else ""}')


def gpu_fallback_warning() -> str | None:
  """One line if a GPU plugin of jax is installed, JAX runs on the CPU and
  $JAX_PLATFORMS did not ask for the CPU alone."""
  if jax.default_backend() != 'cpu' or os.environ.get(
      'JAX_PLATFORMS', '').strip().lower() == 'cpu':
    return None
  plugins = sorted({d.metadata['Name'] for d in
                    importlib.metadata.distributions()
                    if (d.metadata['Name'] or '').lower().replace('_', '-')
                    .startswith(('jax-cuda', 'jax-rocm'))})
  if not plugins:
    return None
  return (f'warning: a GPU build of jax is installed ({", ".join(plugins)}) '
          'but JAX runs on the CPU; check `nvidia-smi` and the driver '
          'minimum in docs/gpus_and_clusters.md, and run with '
          'JAX_PLATFORMS=cuda to see why JAX found no GPU')


def member_sharding(mesh) -> NamedSharding:
  """Stacked members (train state): the leading axis along 'members'."""
  return NamedSharding(mesh, P('members'))


def put_replicated(arrays: dict, mesh) -> dict:
  """Host arrays to every device (each process holds the whole array)."""
  return put(arrays, NamedSharding(mesh, P()))


def put(arrays: dict, sharding) -> dict:
  """Host arrays that every process holds whole, placed with `sharding`."""
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
          for k, v in arrays.items()}


def check(config, mesh):
  """The batch splits over 'data', the members over 'members'."""
  data_devices = mesh.shape['data']
  num_members = len(config_lib.members(config))
  if config.train.batch_size % data_devices:
    raise ConfigError(f'train.batch_size={config.train.batch_size} must be a '
                      f'multiple of the {data_devices} devices')
  if not config.train.shard_members:
    return
  if num_members % mesh.shape['members']:
    raise ConfigError(f'train.shard_members needs a multiple of the '
                      f'{mesh.shape["members"]} devices as members, not '
                      f'{num_members}')
  if jax.process_count() > 1:  # Each process loads a slice of every batch.
    raise ConfigError('train.shard_members works with one process only')
