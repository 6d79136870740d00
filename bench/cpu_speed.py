"""CPU training speed against PyTorch: each model's whole train step, or
(--convs) each 3x3 convolution of ResNet-20 alone.

The step: forward, cross-entropy, backward, SGD with Nesterov momentum 0.9
and weight decay 5e-4, BN statistics; float32, one fixed random batch. JAX
is jitted with its state donated, its convolutions through
resnet_jax/cpu_conv.py (`fast`, as in training) or XLA's own (`xla`), its
first call (trace, compile, one step) timed apart; PyTorch runs eager and
channels-last (gpu_throughput.torch_resnet). img/s = batch / median step.

--convs: per convolution shape, the forward pass, the input gradient (dx)
and the weight gradient (dw: XLA's and cpu_conv.py's), each jitted alone, on
XLA:CPU's Eigen route (what training uses) and its YNNPACK route (XLA's
default, which takes convolutions of more than 16 channels), against
PyTorch's forward and forward + backward (oneDNN); the sums over the net.

  python bench/cpu_speed.py --tune-malloc         # all models, batch 128
  taskset -c 1 python bench/cpu_speed.py --convs  # one core: kernels alone
"""
import argparse
import functools
import os
import statistics
import sys

import common
from gpu_throughput import torch_resnet, torch_sgd

# name: (num_layers n, shortcut); depth is 6n + 2.
MODELS = {'resnet20': (3, 'conv'), 'resnet20-zeropad': (3, 'zeropad'),
          'cnn20': (3, None), 'resnet56': (9, 'conv')}
# (input height = width, in channels, out channels, stride): the 3x3
# convolutions of ResNet-20, with how many of each it has.
SHAPES = {(32, 3, 16, 1): 1, (32, 16, 16, 1): 6, (32, 16, 32, 2): 1,
          (16, 32, 32, 1): 5, (16, 32, 64, 2): 1, (8, 64, 64, 1): 5}
# glibc returns big freed blocks to the OS, so every step of either framework
# page-faults its activations in again (~75k faults/step for ResNet-20 here).
MALLOC_ENV = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
              'MALLOC_TRIM_THRESHOLD_': str(1 << 40)}


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', type=common.names, default=','.join(MODELS),
                 help=f'comma-separated subset of {",".join(MODELS)}')
  p.add_argument('--batch-size', type=int, default=128)
  common.add_steps(p, steps=10, warmup=2)
  p.add_argument('--no-xla', action='store_true',
                 help='skip the (slow) plain-XLA JAX baseline')
  p.add_argument('--no-torch', action='store_true', help='skip PyTorch')
  p.add_argument('--convs', action='store_true',
                 help="time ResNet-20's convolutions one at a time instead")
  p.add_argument('--repeats', type=int, default=15,
                 help='--convs: calls of each, the fastest counts')
  p.add_argument('--tune-malloc', action='store_true',
                 help='re-run this script with ' + ' '.join(
                     f'{k}={v}' for k, v in MALLOC_ENV.items()))
  common.add_json(p)
  args = p.parse_args()
  if unknown := set(args.models) - set(MODELS):
    p.error(f'unknown models {",".join(unknown)}; choose from '
            f'{", ".join(MODELS)}')
  return args


def bench_jax(n, shortcut, conv, batch, warmup, steps, compiler_options):
  """(first call s, [s of each timed step])."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from resnet_jax.models import ResNet  # pylint: disable=import-outside-toplevel
  model = ResNet(num_layers=n, shortcut=shortcut, conv_general_dilated=conv)
  kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (batch, 32, 32, 3), jnp.float32)
  y = jax.random.randint(ky, (batch,), 0, 10)
  variables = model.init(kp, x[:1], train=False)
  tx = optax.chain(optax.add_decayed_weights(5e-4),
                   optax.sgd(0.1, momentum=0.9, nesterov=True))
  state = (variables['params'], variables['batch_stats'],
           tx.init(variables['params']))

  @functools.partial(jax.jit, donate_argnums=0,
                     compiler_options=compiler_options)
  def train_step(state, x, y):
    params, batch_stats, opt_state = state

    def loss_fn(p):
      logits, updates = model.apply({'params': p, 'batch_stats': batch_stats},
                                    x, train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates['batch_stats']
    (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  step = lambda state: train_step(state, x, y)
  first, seconds, _ = common.time_loop(step, state, 1, warmup, repeats=steps)
  return first, seconds


def bench_torch(n, shortcut, batch, warmup, steps):
  """[s of each timed step] of the PyTorch twin, channels-last."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  cl = torch.channels_last
  model = torch_resnet(n, shortcut=shortcut).train().to(memory_format=cl)
  x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=cl)
  y = torch.randint(0, 10, (batch,))
  opt = torch_sgd(model)

  def step(carry):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return carry

  return common.time_loop(step, None, 1, warmup, repeats=steps,
                          sync=lambda carry: carry)[1]


def step_rows(args, torch):
  """One row per model: the whole step's img/s in each framework."""
  from resnet_jax import cpu_conv  # pylint: disable=import-outside-toplevel
  fast = cpu_conv.select_conv(cpu_conv.FAST)
  options = cpu_conv.jit_compiler_options(cpu_conv.FAST)
  rows = common.start_table(
      args, 'model', 'JAX fast img/s', 'JAX XLA img/s', 'PyTorch img/s',
      'fast / PyTorch', 'fast / XLA', 'first call s (fast / XLA)')
  rate = lambda seconds: args.batch_size / statistics.median(seconds)
  fmt = lambda v, spec='.0f': '-' if v is None else format(v, spec)
  for name in args.models:
    n, shortcut = MODELS[name]
    r = {'model': name}
    for key, conv in (('fast', fast), ('xla', None))[:1 + (not args.no_xla)]:
      r[f'{key}_compile'], seconds = bench_jax(
          n, shortcut, conv, args.batch_size, args.warmup, args.steps, options)
      r[key] = rate(seconds)
    if torch:
      r['torch'] = rate(bench_torch(n, shortcut, args.batch_size,
                                    args.warmup, args.steps))
    print(common.table(
        name, fmt(r['fast']), fmt(r.get('xla')), fmt(r.get('torch')),
        fmt(torch and r['fast'] / r['torch'], '.2f'),
        fmt(r.get('xla') and r['fast'] / r['xla'], '.2f'),
        f"{r['fast_compile']:.1f} / {fmt(r.get('xla_compile'), '.1f')}"),
          flush=True)
    rows.add(r)
  print(f'\nbatch {args.batch_size}, float32, median of {args.steps} timed '
        f'steps after {args.warmup} warm-up steps; XLA compiler_options: '
        f'{options}.')


def best_ms(fn, repeats, sync=common.jax_sync):
  """Fastest of `repeats` calls after 3 untimed ones, in ms."""
  return 1e3 * min(common.time_loop(lambda c: fn(), None, 1, 3, repeats,
                                    sync)[1])


def jax_conv_ms(hw, c, out, stride, batch, options, repeats):
  """{pass: ms} of one convolution shape, each pass jitted alone."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax import lax  # pylint: disable=import-outside-toplevel
  from resnet_jax import cpu_conv  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(0), (batch, hw, hw, c))
  w = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, c, out))

  def conv(x, w, impl=lax.conv_general_dilated):
    return impl(x, w, (stride, stride), ((1, 1), (1, 1)),
                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  g = jax.numpy.ones_like(conv(x, w))
  fns = {
      'fwd': lambda x, w, g: conv(x, w),
      'dx': lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
      'dw': lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
      'dw_fast': lambda x, w, g: jax.vjp(lambda w: conv(
          x, w, cpu_conv.conv_general_dilated), w)[1](g)[0],
  }
  return {name: best_ms(functools.partial(jax.jit(
      fn, compiler_options=options), x, w, g), repeats)
          for name, fn in fns.items()}


def torch_conv_ms(hw, c, out, stride, batch, repeats):
  """{'fwd', 'fwd_bwd': ms} of PyTorch's convolution, channels-last."""
  import torch  # pylint: disable=import-outside-toplevel
  cl = torch.channels_last
  x = torch.randn(batch, c, hw, hw).contiguous(memory_format=cl)
  w = (0.1 * torch.randn(out, c, 3, 3)).contiguous(memory_format=cl)
  x.requires_grad_(True)
  w.requires_grad_(True)
  conv = lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=1)
  g = torch.ones_like(conv())

  def forward():
    with torch.no_grad():
      conv()

  same = lambda carry: carry  # Eager: each call has ended when it returns.
  return {'fwd': best_ms(forward, repeats, same),
          'fwd_bwd': best_ms(lambda: torch.autograd.grad(conv(), (x, w), g),
                             repeats, same)}


def conv_rows(args, torch):
  """One row per convolution shape and XLA:CPU route; the network's sums."""
  from resnet_jax import cpu_conv  # pylint: disable=import-outside-toplevel
  routes = {'eigen': cpu_conv.XLA_CPU_COMPILER_OPTIONS,  # What training uses.
            'ynn': None}  # XLA's defaults.
  rows = common.start_table(
      args, 'conv (HxW, in->out, stride)', 'GFLOP', 'route', 'JAX fwd',
      'JAX dx', 'JAX dw (XLA / cpu_conv)', 'JAX fwd+dx+dw', 'PyTorch fwd',
      'PyTorch fwd+bwd', 'JAX / PyTorch')
  sums = dict.fromkeys([*routes, 'torch'], 0.0)
  nan = float('nan')
  for (hw, c, out, stride), count in SHAPES.items():
    gflop = 2 * args.batch_size * (hw // stride) ** 2 * 9 * c * out / 1e9
    ref = torch_conv_ms(hw, c, out, stride, args.batch_size,
                        args.repeats) if torch else {}
    sums['torch'] += count * ref.get('fwd_bwd', nan)
    for route, options in routes.items():
      t = jax_conv_ms(hw, c, out, stride, args.batch_size, options,
                      args.repeats)
      total = t['fwd'] + t['dx'] + min(t['dw'], t['dw_fast'])
      sums[route] += count * total
      print(common.table(
          f'{hw}x{hw}, {c}->{out}, s{stride}', f'{gflop:.2f}', route,
          f'{t["fwd"]:.2f} ({gflop / t["fwd"] * 1e3:.0f} GFLOP/s)',
          f'{t["dx"]:.2f}', f'{t["dw"]:.2f} / {t["dw_fast"]:.2f}',
          f'{total:.2f}', f'{ref.get("fwd", nan):.2f} '
          f'({gflop / ref.get("fwd", nan) * 1e3:.0f} GFLOP/s)',
          f'{ref.get("fwd_bwd", nan):.2f}',
          f'{total / ref["fwd_bwd"]:.2f}' if ref else '-'), flush=True)
      rows.add({'shape': [hw, c, out, stride], 'count': count, 'gflop': gflop,
                'route': route, 'jax_ms': t, 'jax_total_ms': total,
                'torch_ms': ref or None})
  print('\nResNet-20, all its 3x3 convolutions once forward and backward (ms '
        'per batch): ' + ', '.join(f'{k} {v:.1f}' for k, v in sums.items()))
  print(f'batch {args.batch_size}, float32, ms = minimum of {args.repeats} '
        'calls.')


def main():
  args = parse_args()
  malloc_tuned = all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())
  if args.tune_malloc and not malloc_tuned:
    os.environ.update(MALLOC_ENV)  # glibc reads these at start-up: re-exec.
    os.execv(sys.executable, [sys.executable] + sys.argv)
  torch = None
  if not args.no_torch and common.version('torch'):
    import torch  # pylint: disable=import-outside-toplevel
    # As many intra-op threads as the cores XLA uses.
    torch.set_num_threads(len(os.sched_getaffinity(0)))
  elif not args.no_torch:
    print('# PyTorch is not installed: JAX only')
  (conv_rows if args.convs else step_rows)(args, torch)
  print(f'malloc tuning: {"on" if malloc_tuned else "off"}.')


if __name__ == '__main__':
  main()
