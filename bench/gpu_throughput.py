"""Train images/s of the real train step vs a PyTorch twin, on one device
(a GPU or the CPU), and (--members) of several members in one step, and
(--augment) with augmentation and weight averaging on (commands:
bench/README.md).

JAX: the product's step, built and fed as a run does, on synthetic data of
--examples images held on the device; on the CPU `--conv_impl auto,xla` sets
resnet_jax/cpu_conv.py's fast path against XLA's own convolutions. PyTorch
(optional): the same network (torch_resnet), channels-last, bfloat16 by
autocast, a random crop and flip on the device, eager and (--compile)
torch.compile; on the CPU with as many threads as the cores XLA uses. Steps
are dispatched back to back and the clock stops after a device sync, as in a
training loop.
"""
import argparse
import itertools
import os
import sys

import common

# name: (model.num_layers n, model.shortcut); depth 6n + 2. No shortcut: the
# plain CNN of that depth (model.name 'cnn').
MODELS = {'resnet8': (1, 'conv'), 'resnet20': (3, 'conv'),
          'resnet20-zeropad': (3, 'zeropad'), 'cnn20': (3, None),
          'resnet56': (9, 'conv')}
# --tune-malloc: glibc returns big freed blocks to the OS, so every CPU step of
# either framework page-faults its activations in again (~75k faults/step for
# ResNet-20); glibc reads these at start-up, so the script re-executes itself.
MALLOC_ENV = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
              'MALLOC_TRIM_THRESHOLD_': str(1 << 40)}
# The training-set size benchmarks sample from by default: CIFAR-10's 45,000
# after the validation carve, so the step pays what a run pays.
EXAMPLES = 45_000
VAL_EXAMPLES = 64  # Carved off, never evaluated here.
# --augment: what a run adds to the step (crop and flip on, but in 'off').
AUGMENT = {'default': {}, 'cutout': {'data.cutout_size': 16},
           'mixup': {'train.mixup_alpha': 0.2},
           'cutmix': {'train.cutmix_alpha': 1.0},
           'ema': {'train.ema_decay': 0.999},
           'all': {'data.cutout_size': 16, 'train.mixup_alpha': 0.2,
                   'train.cutmix_alpha': 1.0, 'train.ema_decay': 0.999},
           'off': {'data.random_crop': False, 'data.random_flip': False}}


def train_on_synthetic(config, examples: int):
  """Synthetic data with exactly `examples` training images."""
  config.data.source = 'synthetic'
  config.data.synthetic_examples = examples + VAL_EXAMPLES
  config.data.val_fraction = VAL_EXAMPLES / (examples + VAL_EXAMPLES)
  return config


def step_rate(config, steps, warmup, repeats=1):
  """(images/s of all members together, first call s) of the real step (the
  fastest of `repeats` windows of `steps`),
  built and fed as a run does (train.load_train_val, train.make_inputs: in
  memory, the training set on the device and each epoch's order drawn once;
  or streamed batches)."""
  from resnet_jax import models, train, train_state  # pylint: disable=import-outside-toplevel
  from resnet_jax.data import stream  # pylint: disable=import-outside-toplevel
  streamed = stream.should_stream(config)
  mesh = train.create_mesh()
  splits, normalization = train.load_train_val(config, streamed)
  state = train_state.create_train_state(config, models.from_config(config),
                                         mesh)
  inputs, step, _ = train.make_inputs(config, splits, normalization, 0, mesh,
                                      streamed)
  try:
    first, windows, _ = common.time_loop(
        lambda state: step(state, next(inputs))[0], state, steps, warmup,
        repeats)
  finally:
    if streamed:
      inputs.close()
  return config.train.num_seeds * config.train.batch_size / min(windows), first


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


def bench_torch(name, batch, dtype, steps, warmup, compile_model):
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if device == 'cpu':  # As many intra-op threads as the cores XLA uses.
    torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(0)
  n, shortcut = MODELS[name]
  model = torch_resnet(n, shortcut=shortcut).to(
      device, memory_format=torch.channels_last).train()
  if compile_model:
    model = torch.compile(model)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                        nesterov=True, weight_decay=5e-4)
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
  p.add_argument('--models', type=common.names, default='resnet20,resnet56',
                 help=f'comma-separated, of {",".join(MODELS)}')
  p.add_argument('--batch-sizes', type=common.ints, default='128,512',
                 help='per member')
  p.add_argument('--dtypes', type=common.names, default='float32,bfloat16')
  p.add_argument('--members', type=common.ints, default='1',
                 help='comma-separated member counts (train.num_seeds)')
  p.add_argument('--member_chunk', type=common.ints, default='0',
                 help='train.member_chunk, comma-separated to compare: members '
                 'vmapped at a time (0: auto; 1: one member per jitted call, '
                 'no grouped convolutions)')
  p.add_argument('--conv_impl', type=common.names, default='auto',
                 help='model.conv_impl, comma-separated to compare (auto: '
                 "resnet_jax/cpu_conv.py on the CPU, XLA's convolutions off "
                 "it; xla: XLA's everywhere; matmul: batched matrix products "
                 'when vmapped)')
  p.add_argument('--augment', type=common.names, default='default',
                 help=f'comma-separated, of {",".join(AUGMENT)}: augmentation '
                 'and weight averaging as a run sets them (the step against '
                 "the first's: their cost)")
  p.add_argument('--steps', type=int, default=100, help='timed steps')
  p.add_argument('--warmup', type=int, default=10,
                 help='untimed steps after the first (compiling) one')
  p.add_argument('--repeats', type=int, default=1,
                 help='windows of --steps; the fastest counts (a shared '
                 "machine's slow moments left out)")
  p.add_argument('--examples', type=int, default=EXAMPLES,
                 help='training-set size the JAX step samples from '
                 '(1024: the old 8 batches of 128)')
  p.add_argument('--no-torch', action='store_true')
  p.add_argument('--compile', action='store_true', help='also torch.compile')
  p.add_argument('--tune-malloc', action='store_true',
                 help='re-run this script with ' + ' '.join(
                     f'{k}={v}' for k, v in MALLOC_ENV.items()))
  common.add_json(p)
  args = p.parse_args()
  for option, known in (('models', MODELS), ('augment', AUGMENT)):
    if unknown := set(getattr(args, option)) - set(known):
      p.error(f'--{option}: unknown {", ".join(sorted(unknown))}')
  malloc_tuned = all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())
  if args.tune_malloc and not malloc_tuned:
    os.environ.update(MALLOC_ENV)
    os.execv(sys.executable, [sys.executable] + sys.argv)
  if not args.no_torch and not common.version('torch'):
    print('# PyTorch is not installed: JAX only')
    args.no_torch = True
  from resnet_jax import config as config_lib, train  # pylint: disable=import-outside-toplevel
  auto = train.member_chunk_auto(config_lib.base_config()) or 'all'
  print(f'# member_chunk 0 is auto: {auto} on this backend')
  print(f'# malloc tuning (--tune-malloc): {"on" if malloc_tuned else "off"}')
  rows = common.start_table(
      args, 'model', 'batch', 'dtype', 'conv_impl', 'members', 'member_chunk',
      'augment', 'JAX img/s', 'step ms', 'step vs first', 'JAX compile s',
      'PyTorch img/s', 'JAX / PyTorch')
  for name, batch, dtype in itertools.product(args.models, args.batch_sizes,
                                              args.dtypes):
    torch_rate = None if args.no_torch else max(
        bench_torch(name, batch, dtype, args.steps, args.warmup, c)
        for c in ((False, True) if args.compile else (False,)))
    # One member of the first conv_impl and augment: the base.
    one_step = None
    for index, impl in enumerate(args.conv_impl):
      for count, augment in itertools.product(args.members, args.augment):
        # One member is one program whatever the chunk: timed once. Past the
        # first conv_impl, chunks of one member (nothing vmapped, so nothing
        # for a formulation of members to change) are skipped.
        for chunk in args.member_chunk[:1] if count == 1 else [
            c for c in args.member_chunk if not (index and c == 1)]:
          config = train_on_synthetic(config_lib.base_config(), args.examples)
          config.update_from_flattened_dict(AUGMENT[augment])
          config.model.num_layers, shortcut = MODELS[name]
          if shortcut:
            config.model.shortcut = shortcut
          else:
            config.model.name = 'cnn'
          config.model.conv_impl = impl
          config.train.batch_size, config.train.dtype = batch, dtype
          config.train.num_seeds, config.train.member_chunk = count, chunk
          rate, compile_s = step_rate(config, args.steps, args.warmup,
                                      args.repeats)
          step_ms = 1000 * count * batch / rate
          one_step = one_step or (step_ms if count == 1 else None)
          # PyTorch trains one member with crop and flip: set beside those.
          versus = torch_rate if count == 1 and augment == 'default' else None
          print(common.table(
              name, batch, dtype, impl, count, chunk, augment, f'{rate:,.0f}',
              f'{step_ms:.1f}', f'{step_ms / one_step:.2f}x' if one_step
              else '-', f'{compile_s:.1f}', f'{versus:,.0f}' if versus else '-',
              f'{rate / versus:.2f}' if versus else '-'), flush=True)
          rows.add({'model': name, 'batch': batch, 'dtype': dtype,
                    'conv_impl': impl, 'members': count, 'member_chunk': chunk,
                    'augment': augment,
                    'examples': args.examples, 'jax_images_per_sec': rate,
                    'jax_compile_s': compile_s, 'step_ms': step_ms,
                    'torch_images_per_sec': versus})


if __name__ == '__main__':
  main()
