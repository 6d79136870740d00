"""Train images/s of the real train step vs a PyTorch twin, on one device.

JAX: resnet_jax.train.make_train_fn, the product's jitted step (on-device
batch sampling, pad-crop-flip, normalize, forward, backward, SGD-Nesterov,
BN update), on synthetic 32x32 data held on the device, 45,000 training
images by default (CIFAR-10's; --examples), each epoch's order drawn once
as in a run. PyTorch: the same
network (bench/torch_resnet.py), channels-last, SGD-Nesterov, bfloat16 by
autocast, a per-batch random crop and per-example flip on the device, eager
and (with --compile) torch.compile. Steps are dispatched back to back and the
clock stops after a device sync, as in a training loop.

  python bench/gpu_throughput.py                          # the issue's grid
  python bench/gpu_throughput.py --models resnet20 --batch-sizes 128 --steps 3
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]

DEPTH = {'resnet8': 1, 'resnet20': 3, 'resnet56': 9}


# The training-set size benchmarks sample from by default: CIFAR-10's 45,000
# after the validation carve, so the step pays what a real run pays.
EXAMPLES = 45_000
VAL_EXAMPLES = 64  # Carved off, never evaluated here.


def train_on_synthetic(config, examples: int):
  """Synthetic data with exactly `examples` training images."""
  config.data.source = 'synthetic'
  config.data.synthetic_examples = examples + VAL_EXAMPLES
  config.data.val_fraction = VAL_EXAMPLES / (examples + VAL_EXAMPLES)
  return config


def bench_jax(n, batch, dtype, steps, warmup, num_seeds=1, member_chunk=0,
              examples=EXAMPLES, conv_impl='auto'):
  """(images/s of all members together, compile s) of the real step, fed as
  a run feeds it (train.make_inputs: the training set on the device, each
  epoch's order drawn once)."""
  import jax
  from resnet_jax import config as config_lib, data, models, train
  config = train_on_synthetic(config_lib.base_config(), examples)
  config.model.num_layers = n
  config.train.batch_size, config.train.dtype = batch, dtype
  config.train.num_seeds = num_seeds
  config.train.member_chunk = member_chunk
  config.model.conv_impl = conv_impl
  mesh = train.create_mesh()
  splits = data.load_splits(config, ('train', 'val'))
  normalization = data.channel_stats(splits['train'].images)
  state = train.create_train_state(config, models.from_config(config),
                                   mesh)
  inputs, step, _ = train.make_inputs(config, splits, normalization, 0, mesh,
                                      streamed=False)
  start = time.perf_counter()
  state, metrics = step(state, next(inputs))
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = step(state, next(inputs))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, next(inputs))
  jax.block_until_ready((state, metrics))
  return (num_seeds * batch * steps / (time.perf_counter() - start),
          compile_s)


def bench_torch(n, batch, dtype, steps, warmup, compile_model):
  import torch
  import torch.nn.functional as F
  from torch_resnet import ResNet
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  model = ResNet(n).to(device, memory_format=torch.channels_last).train()
  if compile_model:
    model = torch.compile(model)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                        nesterov=True, weight_decay=5e-4)
  images = torch.randint(0, 256, (batch * 8, 3, 32, 32), dtype=torch.uint8,
                         device=device)
  labels = torch.randint(0, 10, (batch * 8,), device=device)
  autocast = torch.autocast(device, torch.bfloat16,
                            enabled=dtype == 'bfloat16')

  def run_step():
    idx = torch.randint(0, len(labels), (batch,), device=device)
    x = F.pad(images[idx].float() / 255, (4, 4, 4, 4))
    i, j = torch.randint(0, 9, (2,)).tolist()
    x = x[:, :, i:i + 32, j:j + 32]
    flip = torch.rand(batch, 1, 1, 1, device=device) < 0.5
    x = torch.where(flip, x.flip(3), x).contiguous(
        memory_format=torch.channels_last)
    opt.zero_grad(set_to_none=True)
    with autocast:
      loss = F.cross_entropy(model(x), labels[idx])
    loss.backward()
    opt.step()

  sync = torch.cuda.synchronize if device == 'cuda' else lambda: None
  for _ in range(warmup):
    run_step()
  sync()
  start = time.perf_counter()
  for _ in range(steps):
    run_step()
  sync()
  return batch * steps / (time.perf_counter() - start)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--models', default='resnet20,resnet56')
  p.add_argument('--batch-sizes', default='128,512')
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--steps', type=int, default=100)
  p.add_argument('--warmup', type=int, default=10)
  p.add_argument('--no-torch', action='store_true')
  p.add_argument('--compile', action='store_true', help='also torch.compile')
  p.add_argument('--examples', type=int, default=EXAMPLES,
                 help='training-set size the JAX step samples from (1024: '
                 'the old 8 batches of 128)')
  p.add_argument('--json', metavar='FILE',
                 help='also write the rows here, rewritten after each row')
  args = p.parse_args()
  import jax
  print(f'# jax {jax.__version__} on {jax.devices()[0].device_kind}; '
        f'command: {" ".join(sys.argv)}')
  print('| model | batch | dtype | JAX img/s | JAX compile s | PyTorch img/s '
        '| JAX / PyTorch |')
  print('|---|---|---|---|---|---|---|')
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print('# PyTorch is not installed: JAX only')
    args.no_torch = True
  rows = []
  for name in args.models.split(','):
    for batch in map(int, args.batch_sizes.split(',')):
      for dtype in args.dtypes.split(','):
        rate, compile_s = bench_jax(DEPTH[name], batch, dtype, args.steps,
                                    args.warmup, examples=args.examples)
        torch_rate = None
        if not args.no_torch:
          torch_rate = max(
              bench_torch(DEPTH[name], batch, dtype, args.steps, args.warmup, c)
              for c in ((False, True) if args.compile else (False,)))
        ratio = f'{rate / torch_rate:.2f}' if torch_rate else '-'
        print(f'| {name} | {batch} | {dtype} | {rate:,.0f} | {compile_s:.1f} | '
              f'{f"{torch_rate:,.0f}" if torch_rate else "-"} | {ratio} |',
              flush=True)
        rows.append({'model': name, 'batch': batch, 'dtype': dtype,
                     'examples': args.examples,
                     'jax_images_per_sec': rate, 'jax_compile_s': compile_s,
                     'torch_images_per_sec': torch_rate})
        if args.json:  # Row by row: a run stopped midway keeps its rows.
          write_json(args.json, {'command': ' '.join(sys.argv), 'rows': rows})


def write_json(path, report):
  """`report` to `path`, replaced whole (workdir.write_text): never torn."""
  from resnet_jax import workdir  # pylint: disable=import-outside-toplevel
  workdir.write_text(path, json.dumps(report, indent=1))


if __name__ == '__main__':
  main()
