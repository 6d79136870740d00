"""Train images/s of the real train step vs a PyTorch twin, on one device.

JAX: resnet_jax.train.make_train_fn, the product's jitted step (on-device
batch sampling, pad-crop-flip, normalize, forward, backward, SGD-Nesterov,
BN update), on synthetic 32x32 data held on the device, 45,000 training
images by default (CIFAR-10's; --examples), each epoch's order drawn once
as in a run. PyTorch: the same network (torch_resnet below), channels-last,
SGD-Nesterov, bfloat16 by autocast, a per-batch random crop and per-example
flip on the device, eager and (with --compile) torch.compile. Steps are
dispatched back to back and the clock stops after a device sync, as in a
training loop. PyTorch is optional (pip install torch): JAX only without it.

  python bench/gpu_throughput.py                          # the issue's grid
  python bench/gpu_throughput.py --models resnet20 --batch-sizes 128 --steps 3
"""
import argparse

import common

DEPTH = {'resnet8': 1, 'resnet20': 3, 'resnet56': 9}
# The training-set size benchmarks sample from by default: CIFAR-10's 45,000
# after the validation carve, so the step pays what a run pays.
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
  from resnet_jax import config as config_lib, data, models, train, train_state  # pylint: disable=import-outside-toplevel
  config = train_on_synthetic(config_lib.base_config(), examples)
  config.model.num_layers, config.model.conv_impl = n, conv_impl
  config.train.batch_size, config.train.dtype = batch, dtype
  config.train.num_seeds = num_seeds
  config.train.member_chunk = member_chunk
  mesh = train.create_mesh()
  splits = data.load_splits(config, ('train', 'val'))
  state = train_state.create_train_state(config, models.from_config(config),
                                         mesh)
  inputs, step, _ = train.make_inputs(
      config, splits, data.channel_stats(splits['train'].images), 0, mesh,
      streamed=False)
  compile_s, [seconds], _ = common.time_loop(
      lambda state: step(state, next(inputs))[0], state, steps, warmup)
  return num_seeds * batch / seconds, compile_s


def add_feed_args(parser):
  parser.add_argument('--examples', type=int, default=EXAMPLES,
                      help='training-set size the JAX step samples from '
                      '(1024: the old 8 batches of 128)')
  common.add_json(parser)


def torch_resnet(num_layers, num_classes=10, shortcut='conv'):
  """PyTorch twin of resnet_jax.models.ResNet, layer for layer: 3x3/16 stem
  + BN + ReLU, three stages of n basic blocks (16, 32, 64 channels; stride 2
  entering stages 2 and 3), 1x1 strided conv + BN ('conv') or subsample +
  zero-pad ('zeropad') shortcuts, or none (the plain CNN), global average
  pooling, a dense classifier."""
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  def conv_bn(cin, cout, k, stride):
    return [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(cout)]

  class BasicBlock(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(),
                                *conv_bn(cout, cout, 3, 1))
      self.stride, self.extra = stride, cout - cin
      self.proj = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                   if shortcut == 'conv' and (stride != 1 or cin != cout)
                   else None)

    def forward(self, x):
      y = self.body(x)
      if shortcut is None:
        return F.relu(y)
      if self.proj is not None:
        x = self.proj(x)
      elif self.stride != 1 or self.extra:  # Option A, as in models.py.
        x = F.pad(x[:, :, ::self.stride, ::self.stride],
                  (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + x)

  blocks, cin = [], 16
  for stage, cout in enumerate((16, 32, 64)):
    for block in range(num_layers):
      blocks.append(BasicBlock(cin, cout, 2 if stage and not block else 1))
      cin = cout
  return nn.Sequential(*conv_bn(3, 16, 3, 1), nn.ReLU(), *blocks,
                       nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(64, num_classes))


def torch_sgd(model):
  import torch  # pylint: disable=import-outside-toplevel
  return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                         nesterov=True, weight_decay=5e-4)


def bench_torch(n, batch, dtype, steps, warmup, compile_model):
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  model = torch_resnet(n).to(device, memory_format=torch.channels_last).train()
  if compile_model:
    model = torch.compile(model)
  opt = torch_sgd(model)
  images = torch.randint(0, 256, (batch * 8, 3, 32, 32), dtype=torch.uint8,
                         device=device)
  labels = torch.randint(0, 10, (batch * 8,), device=device)
  autocast = torch.autocast(device, torch.bfloat16,
                            enabled=dtype == 'bfloat16')

  def step(carry):
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
    return carry

  def sync(carry):
    if device == 'cuda':
      torch.cuda.synchronize()
    return carry

  _, [seconds], _ = common.time_loop(step, None, steps, warmup, sync=sync)
  return batch / seconds


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--models', type=common.names, default='resnet20,resnet56')
  p.add_argument('--batch-sizes', type=common.ints, default='128,512')
  p.add_argument('--dtypes', type=common.names, default='float32,bfloat16')
  common.add_steps(p, steps=100, warmup=10)
  p.add_argument('--no-torch', action='store_true')
  p.add_argument('--compile', action='store_true', help='also torch.compile')
  add_feed_args(p)
  args = p.parse_args()
  if not common.version('torch'):
    print('# PyTorch is not installed: JAX only')
    args.no_torch = True
  rows = common.start_table(args, 'model', 'batch', 'dtype', 'JAX img/s',
                            'JAX compile s', 'PyTorch img/s', 'JAX / PyTorch')
  for name in args.models:
    for batch in args.batch_sizes:
      for dtype in args.dtypes:
        rate, compile_s = bench_jax(DEPTH[name], batch, dtype, args.steps,
                                    args.warmup, examples=args.examples)
        torch_rate = None if args.no_torch else max(
            bench_torch(DEPTH[name], batch, dtype, args.steps, args.warmup, c)
            for c in ((False, True) if args.compile else (False,)))
        print(common.table(
            name, batch, dtype, f'{rate:,.0f}', f'{compile_s:.1f}',
            f'{torch_rate:,.0f}' if torch_rate else '-',
            f'{rate / torch_rate:.2f}' if torch_rate else '-'), flush=True)
        rows.add({'model': name, 'batch': batch, 'dtype': dtype,
                  'examples': args.examples, 'jax_images_per_sec': rate,
                  'jax_compile_s': compile_s,
                  'torch_images_per_sec': torch_rate})


if __name__ == '__main__':
  main()
