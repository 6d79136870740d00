"""The train and eval steps a GPU run would build, lowered for CUDA here.

No GPU needed: jax.export lowers a jitted function for a platform it does
not run on. Each case (CASES) builds the steps as train.py does on a GPU
backend, on 8 fake CPU devices for the mesh, and reports what the StableHLO
holds (`report`); tests/test_cuda_lowering.py asserts on it.
"""
import os
import re
import sys

import common  # First: the repository on sys.path.

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
# pylint: disable=wrong-import-position
import argparse
import collections
import json
import unittest.mock

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import config as config_lib
from resnet_jax import inference, models, train, train_state

# Custom calls that only carry sharding annotations (no kernel).
SHARDING_CALLS = {'Sharding', 'SPMDFullToShardShape', 'SPMDShardToFullShape'}
CASES = {  # name: (members, dtype, train.shard_members, model.conv_impl)
    '1 member, float32': (1, 'float32', False, 'auto'),
    '1 member, bfloat16': (1, 'bfloat16', False, 'auto'),
    '4 members, float32': (4, 'float32', False, 'auto'),
    '8 members sharded, bfloat16': (8, 'bfloat16', True, 'auto'),
    # The members' other formulation (matmul_conv): batched matrix products.
    '4 members, float32, matmul': (4, 'float32', False, 'matmul'),
}


def structs(tree, sharding):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def arg_shardings(module_text: str) -> dict:
  """{argument path: its sharding, e.g. '[{"members"}, {}]'} of @main."""
  signature = module_text[module_text.index('func.func public @main('):]
  signature = signature[:signature.index(') -> (')]
  out = {}
  for attrs, path in re.findall(r'%arg\d+: tensor<[^>]*> \{(.*?)\} loc\("([^"]*)"\)',
                                signature):
    found = re.search(r'sdy\.sharding<@\w+, (\[.*?\])>', attrs)
    out[path] = found.group(1) if found else 'replicated'
  return out


def report(module_text: str, exported) -> dict:
  calls = re.findall(r'stablehlo\.custom_call @([\w.]+)', module_text)
  calls += re.findall(r'call_target_name = "([\w.]+)"', module_text)
  return {
      'platforms': list(exported.platforms),
      # A CPU-only custom call or a host callback would fail or stall on a GPU.
      'kernel_calls': sorted(set(calls) - SHARDING_CALLS),
      'convolutions': len(re.findall(r'stablehlo\.convolution', module_text)),
      'convolution_types': sorted(set(re.findall(
          r'stablehlo\.convolution[^\n]*-> tensor<[^>]*x(\w+)>', module_text))),
      # Vmapped members turn each convolution into a grouped one (feature
      # groups = members, in the backward pass too): the kernels cuDNN and
      # XLA:GPU run slowly (issue 31).
      'convolution_groups': dict(sorted(collections.Counter(
          f'feature {f}, batch {b}' for b, f in re.findall(
              r'batch_group_count = (\d+) : i64, feature_group_count = (\d+)',
              module_text)).items())),
      # Matrix products with a batch dimension (vmapped members' dense
      # layers; every layer's under model.conv_impl=matmul): batched GEMMs.
      'batched_dots': len(re.findall(
          r'stablehlo\.dot_general[^\n]*batching_dims = \[', module_text)),
      'mesh': re.findall(r'sdy\.mesh @\w+ = (<[^>]*>)', module_text),
      'arg_shardings': arg_shardings(module_text),
      'constraints': sorted(set(re.findall(
          r'sdy\.sharding_constraint %\w+ <@\w+, (\[.*?\])> : (tensor<[^>]*>)',
          module_text))),
  }


def shapes(sharding, **arrays):
  """{name: a ShapeDtypeStruct of (shape, dtype) with `sharding`}."""
  return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
          for name, (shape, dtype) in arrays.items()}


def lower_case(members, dtype, shard_members, conv_impl, platform):
  config = config_lib.base_config()  # ResNet-20, 1x1-conv shortcuts, 32x32.
  config.data.source, config.model.conv_impl = 'synthetic', conv_impl
  config.train.batch_size, config.train.dtype = 64, dtype
  config.train.num_seeds, config.train.shard_members = members, shard_members
  # What train.py builds when jax.default_backend() is 'gpu' (conv_impl auto:
  # XLA's convolutions; no CPU-only compiler options).
  with unittest.mock.patch.object(jax, 'default_backend', lambda: 'gpu'):
    mesh = train.create_mesh(shard_members)
    model = models.from_config(config)
    state = jax.eval_shape(lambda: train_state.create_train_state(config, model,
                                                             mesh))
    train_fn = train.make_train_fn(config, mesh, ((0.5,) * 3, (0.25,) * 3))
    eval_fn = inference.make_eval_fn(((0.5,) * 3, (0.25,) * 3), mesh,
                                     flip=True)
  state = structs(state, train.member_sharding(mesh))
  replicated = NamedSharding(mesh, P())
  # The in-memory step's inputs (order.EpochOrders): the training set,
  # replicated, and each member's order of the epoch.
  inputs = {'data': shapes(replicated, image=((1024, 32, 32, 3), jnp.uint8),
                           label=((1024,), jnp.int32)),
            **shapes(train.member_sharding(mesh),
                     order=((members, 1024), jnp.int32))}
  active = jax.ShapeDtypeStruct((members,), jnp.bool_, sharding=replicated)
  eval_data = shapes(NamedSharding(mesh, P(None, 'data')),
                     image=((2, 64, 32, 32, 3), jnp.uint8),
                     label=((2, 64), jnp.int32), mask=((2, 64), jnp.bool_))
  out = {}
  for name, fn, args in (
      ('train_step', train_fn, (state, inputs, active)),
      ('eval_step', eval_fn, (inference.members_of(state), eval_data))):
    exported = jax.export.export(fn, platforms=[platform])(*args)
    out[name] = report(exported.mlir_module(), exported)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--json', action='store_true', help='one JSON object')
  parser.add_argument('--platforms', type=common.names, default='cuda',
                      help='comma-separated, each lowered on its own: cuda, '
                      'rocm, tpu')
  args = parser.parse_args()
  results = {'jax': jax.__version__, 'devices': jax.device_count()}
  for platform in args.platforms:
    results[platform] = {name: lower_case(*case, platform)
                         for name, case in CASES.items()}
  if args.json:
    print(json.dumps(results))
    return
  # The counts; --json adds the mesh, the shardings and the constraints.
  print(f'jax {results["jax"]}, {results["devices"]} fake CPU devices')
  for platform in args.platforms:
    for name, steps in results[platform].items():
      for step, r in steps.items():
        print(f'{platform} {name:28s} {step:10s} convolutions '
              f'{r["convolutions"]:3d} {r["convolution_types"]} '
              f'{r["convolution_groups"]}, batched dots '
              f'{r["batched_dots"]}, kernel calls: '
              f'{r["kernel_calls"] or "none"}')


if __name__ == '__main__':
  sys.exit(main())
