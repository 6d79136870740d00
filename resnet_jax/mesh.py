"""The device mesh, how host arrays are placed on it, and what it needs of
the config.

Axes ('members', 'data'): by default the batch is split along 'data' and
every device holds every member; with train.shard_members the member axis is
split instead and each device trains whole members.
"""
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
