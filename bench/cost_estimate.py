"""An ESTIMATE of an H100 SXM train step from XLA's cost analysis: no GPU ran.

    python bench/cost_estimate.py [--models resnet20,resnet56]
        [--dtypes float32,bfloat16] [--batch-size 128] [--json FILE]

Builds the product's train step (train.make_train_fn: batch sampling from
the on-device dataset, crop-flip, forward, backward, SGD-Nesterov, BN update;
one member) as a GPU run builds it: XLA's convolutions
(`model.conv_impl='xla'`, what 'auto' resolves to on a GPU backend, with
train.py seeing a 'gpu' backend as in bench/cuda_lowering.py). It is
compiled here for the CPU and XLA's cost analysis of the compiled module
gives FLOPs and bytes accessed per step. The compiled module rather than the
lowered one: XLA's fusion has run, so bytes count what crosses fusion
boundaries, as a GPU kernel reads and writes memory; the lowered module
counts every elementwise op's operands and output (2.2-2.5x more here).
The FLOPs of both agree within a few per cent and are checked against a
hand count (3 x the forward convolutions).

The GPU figures derived from these are a model, not a measurement:
  - roofline: max(FLOPs / peak, bytes / HBM bandwidth) with NVIDIA's H100
    SXM datasheet peaks (dense): BF16 tensor 989 TFLOP/s, TF32 tensor 494
    (JAX's default precision lets XLA run float32 convolutions in TF32),
    FP32 non-tensor 67, HBM3 3.35 TB/s;
  - launch bound: the kernels a step runs x 3-5 us each (launch gap plus the
    minimum run time of a small kernel). Kernels are counted as the
    top-level ops of the CPU-compiled module that touch an activation-sized
    tensor (one larger than the largest parameter); the parameter-sized ones
    (optimizer update, finiteness checks) XLA:GPU fuses horizontally into a
    handful of kernels, so they are left out. XLA:CPU fuses differently from
    XLA:GPU, so this count is itself approximate.
Caveats: XLA:CPU computes bfloat16 convolutions in float32 (the compiled
module holds no bfloat16 convolution), so the bfloat16 bytes here barely
differ from float32's, while a GPU runs them natively; BatchNorm stays
float32 in both. Convolutions of 16-64 channels on 8-32 pixel maps reach a
small fraction of the tensor peaks, so the compute term is a floor.
"""
import argparse
import json
import os
import re
import sys
import time
import unittest.mock

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path[:0] = [ROOT, BENCH]
_XLA_FLAGS = os.environ.get('XLA_FLAGS')
# pylint: disable=wrong-import-position
import cuda_lowering  # Asks for 8 fake CPU devices; one device is used here.
if _XLA_FLAGS is None:
  os.environ.pop('XLA_FLAGS', None)
else:
  os.environ['XLA_FLAGS'] = _XLA_FLAGS

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from cpu_speed import cpu_model
from resnet_jax import models, train

DEPTH = {'resnet8': 1, 'resnet20': 3, 'resnet56': 9}
# NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column; the tensor figures
# are the dense ones (the datasheet's headline numbers are with sparsity, 2x).
H100_SXM = {'bf16_tensor_flops': 989e12, 'tf32_tensor_flops': 494e12,
            'fp32_flops': 67e12, 'hbm_bytes_per_s': 3.35e12}
KERNEL_US = (3.0, 5.0)  # Per-kernel floor: launch gap + a small kernel's run.
EPOCH_IMAGES = 45_000  # CIFAR-10's training split (val_fraction 0.1).
# Small compile: cost analysis reads the optimized HLO, which LLVM's
# optimization level does not change.
COMPILER_OPTIONS = {'xla_backend_optimization_level': 0,
                    'xla_llvm_disable_expensive_passes': True}
ELEMENT_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2,
                 'u16': 2, 'f32': 4, 's32': 4, 'u32': 4, 'f64': 8, 's64': 8,
                 'u64': 8}
TRIVIAL_OPS = {'parameter', 'constant', 'bitcast', 'get-tuple-element',
               'tuple'}


def one_device_mesh():
  """train.create_mesh's axes on a single device: the cost of one device's
  step, whatever device count this process has."""
  return jax.make_mesh((1, 1), ('members', 'data'), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def valid_taps(size, kernel, stride, pad):
  """Kernel taps inside the image, summed over one axis' output positions
  (XLA's FLOP count skips the taps that fall on padding)."""
  out = (size + 2 * pad - kernel) // stride + 1
  return sum(1 for o in range(out) for j in range(kernel)
             if 0 <= o * stride - pad + j < size)


def hand_count_flops(num_layers, batch_size, image_size=32, shortcut='conv',
                     channels=3, num_classes=10):
  """FLOPs of a train step by hand: 3 x the forward convolutions (and the
  classifier), i.e. forward, input gradient and weight gradient of each.
  From the architecture (models.py), not from XLA."""
  def conv(size, cin, cout, kernel, stride, pad):
    return 2 * valid_taps(size, kernel, stride, pad) ** 2 * cin * cout

  size, cin = image_size, channels
  forward = conv(size, cin, models.STAGE_WIDTHS[0], 3, 1, 1)
  cin = models.STAGE_WIDTHS[0]
  for stage, cout in enumerate(models.STAGE_WIDTHS):
    for block in range(num_layers):
      stride = 2 if stage > 0 and block == 0 else 1
      forward += conv(size, cin, cout, 3, stride, 1)
      out = (size - 1) // stride + 1
      forward += conv(out, cout, cout, 3, 1, 1)
      if shortcut == 'conv' and (stride != 1 or cin != cout):
        forward += conv(size, cin, cout, 1, stride, 0)
      size, cin = out, cout
  forward += 2 * cin * num_classes
  return 3 * forward * batch_size


def hlo_ops(hlo_text):
  """[(op, largest tensor's elements, bytes of output + operands)] of the
  entry computation's non-trivial instructions."""
  entry = re.search(r'^ENTRY .*?^}', hlo_text, re.S | re.M).group(0)
  sizes, ops = {}, []
  for line in entry.splitlines()[1:-1]:
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$',
                 line)
    if not m:
      continue
    name, shape, op, rest = m.groups()
    tensors = [(ELEMENT_BYTES.get(dt, 4), eval_dims(dims)) for dt, dims in
               re.findall(r'\b([a-z]+\d*)\[([\d,]*)\]', shape)
               if dt in ELEMENT_BYTES]
    sizes[name] = (sum(b * n for b, n in tensors),
                   max((n for _, n in tensors), default=0))
    if op in TRIVIAL_OPS:
      continue
    operands = re.findall(r'%([\w.\-]+)', rest.split(')')[0])
    total = sizes[name][0] + sum(sizes.get(o, (0, 0))[0] for o in operands)
    largest = max([sizes[name][1]] + [sizes.get(o, (0, 0))[1]
                                      for o in operands])
    ops.append((op, largest, total))
  return ops


def eval_dims(dims):
  n = 1
  for d in dims.split(','):
    n *= int(d) if d else 1
  return n


def create_model(config):
  """train.create_model (models.from_config where a newer train.py moved
  it): the model a run of `config` builds."""
  create = getattr(train, 'create_model', None) or models.from_config
  return create(config)


def step_config(num_layers, dtype, batch_size, image_size=32):
  config = cuda_lowering.case_config(1, dtype, False)
  config.model.num_layers = num_layers
  config.model.conv_impl = 'xla'
  config.data.image_size = image_size
  config.train.batch_size = batch_size
  return config


def analyze(num_layers, dtype, batch_size=128, image_size=32, examples=None):
  """XLA's cost analysis of one member's train step, and what the HLO holds.

  `examples` is the size of the on-device dataset the step samples from
  (default 8 batches): the step only slices its epoch's order (drawn once
  per epoch, outside the step), but XLA's analysis counts the batch gather
  as reading the whole dataset, which a GPU does not.
  """
  config = step_config(num_layers, dtype, batch_size, image_size)
  examples = examples or 8 * batch_size
  mesh = one_device_mesh()
  start = time.perf_counter()
  # What train.py builds when jax.default_backend() is 'gpu'.
  with unittest.mock.patch.object(jax, 'default_backend', lambda: 'gpu'):
    model = create_model(config)
    state = jax.eval_shape(lambda: train.create_train_state(config, model,
                                                             mesh))
    train_fn = train.make_train_fn(config, mesh, ((0.5,) * 3, (0.25,) * 3))
  largest_param = max(x.size for x in jax.tree.leaves(state.params))
  # train.member_sharding: the leading member axis along 'members'.
  state = cuda_lowering.structs(state, NamedSharding(mesh, P('members')))
  lowered = train_fn.lower(state, cuda_lowering.train_inputs(
      examples, 1, mesh, image_size))
  compiled = lowered.compile(compiler_options=COMPILER_OPTIONS)
  seconds = time.perf_counter() - start
  cost, lowered_cost = compiled.cost_analysis(), lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost, lowered_cost = cost[0], lowered_cost[0]
  hlo = compiled.as_text()
  ops = hlo_ops(hlo)
  convolutions = re.findall(r'(\w+)\[[\d,]*\]\{[\d,]*\} convolution\(', hlo)
  return {
      'model': f'resnet{6 * num_layers + 2}', 'num_layers': num_layers,
      'dtype': dtype, 'batch_size': batch_size, 'image_size': image_size,
      'examples': examples,
      'flops': cost['flops'], 'bytes': cost['bytes accessed'],
      'lowered_flops': lowered_cost['flops'],
      'lowered_bytes': lowered_cost['bytes accessed'],
      'hand_flops': hand_count_flops(num_layers, batch_size, image_size),
      'hlo_ops': len(ops),
      'activation_ops': sum(1 for _, n, _ in ops if n > largest_param),
      'bytes_from_ops': sum(b for _, _, b in ops),
      'convolutions': len(convolutions),
      'convolution_types': sorted(set(convolutions)),
      'seconds': seconds,
  }


def h100_estimate(r):
  """The roofline and launch-bound step times (us) of an analyze() row."""
  peak = (H100_SXM['bf16_tensor_flops'] if r['dtype'] == 'bfloat16'
          else H100_SXM['tf32_tensor_flops'])
  compute_us = r['flops'] / peak * 1e6
  memory_us = r['bytes'] / H100_SXM['hbm_bytes_per_s'] * 1e6
  roofline_us = max(compute_us, memory_us)
  launch_us = tuple(r['activation_ops'] * k for k in KERNEL_US)
  step_us = tuple(max(roofline_us, l) for l in launch_us)  # (fast, slow)
  steps_per_epoch = EPOCH_IMAGES // r['batch_size']
  return {
      'compute_us': compute_us,
      'compute_us_fp32_no_tensor_cores':
          r['flops'] / H100_SXM['fp32_flops'] * 1e6,
      'memory_us': memory_us, 'roofline_us': roofline_us,
      'launch_us': launch_us, 'step_us': step_us,
      'steps_per_s': tuple(1e6 / s for s in step_us),
      'images_per_s': tuple(r['batch_size'] * 1e6 / s for s in step_us),
      'epoch_s': tuple(steps_per_epoch * s / 1e6 for s in step_us),
  }


def span(pair, fmt='{:,.0f}'):
  low, high = sorted(pair)
  return fmt.format(low) if fmt.format(low) == fmt.format(high) else (
      f'{fmt.format(low)}-{fmt.format(high)}')


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--models', default='resnet20,resnet56',
                 help=f'comma-separated, of {",".join(DEPTH)}')
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--batch-size', type=int, default=128)
  p.add_argument('--json', metavar='FILE', help='also write the rows here')
  args = p.parse_args()
  command = ' '.join(['python', 'bench/cost_estimate.py'] + sys.argv[1:])
  print(f'# ESTIMATE, not a measurement: XLA cost analysis of the CPU-compiled '
        f'train step (XLA convolutions, 1 member, batch {args.batch_size}), '
        f'H100 SXM datasheet peaks')
  print(f'# {cpu_model()}, {os.cpu_count()} cores; jax {jax.__version__}; '
        f'command: {command}')
  print('| model | dtype | GFLOP/step (XLA) | GFLOP hand (3x fwd) | MB/step '
        '| roofline us | kernels | launch-bound us (3-5 us each) '
        '| step us | steps/s | images/s | epoch s (45,000 img) |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  rows = []
  for name in args.models.split(','):
    for dtype in args.dtypes.split(','):
      r = analyze(DEPTH[name], dtype, args.batch_size)
      e = h100_estimate(r)
      rows.append({**r, 'h100_sxm_estimate': e})
      print(f'| {r["model"]} | {dtype} | {r["flops"] / 1e9:.1f} | '
            f'{r["hand_flops"] / 1e9:.1f} | {r["bytes"] / 1e6:,.0f} | '
            f'{e["roofline_us"]:,.0f} | {r["activation_ops"]:,} | '
            f'{span(e["launch_us"])} | {span(e["step_us"])} | '
            f'{span(e["steps_per_s"])} | {span(e["images_per_s"])} | '
            f'{span(e["epoch_s"], "{:.2f}")} |', flush=True)
  print('# roofline = max(FLOPs / peak (BF16 989, TF32 494 TFLOP/s dense), '
        'bytes / 3.35 TB/s); step = max(roofline, launch bound)')
  for row in rows:
    e = row['h100_sxm_estimate']
    print(f'# {row["model"]} {row["dtype"]}: compute {e["compute_us"]:,.0f} us '
          f'(FP32 without tensor cores {e["compute_us_fp32_no_tensor_cores"]:,.0f}),'
          f' memory {e["memory_us"]:,.0f} us; XLA/hand FLOPs '
          f'{row["flops"] / row["hand_flops"]:.3f}; lowered module: '
          f'{row["lowered_flops"] / 1e9:.1f} GFLOP, '
          f'{row["lowered_bytes"] / 1e6:,.0f} MB; {row["hlo_ops"]} top-level '
          f'CPU ops in all; {row["convolutions"]} convolutions '
          f'{row["convolution_types"]}; {row["seconds"]:.1f} s to build')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'command': command, 'cpu': cpu_model(),
                 'jax': jax.__version__, 'peaks': H100_SXM, 'rows': rows}, f,
                indent=1)


if __name__ == '__main__':
  main()
