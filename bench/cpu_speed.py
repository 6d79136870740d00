"""CPU training throughput: JAX (fast conv path and plain XLA) vs PyTorch eager.

One full train step per iteration for every framework: forward, cross-entropy,
backward, SGD with Nesterov momentum 0.9 and weight decay 5e-4, BN running
statistics update; float32, fixed random batch. JAX steps are jitted with the
parameters, BN statistics and optimizer state donated. The first JAX call
(trace + XLA compile + one step) is reported apart from the steady state;
every timed step ends with block_until_ready (JAX) or once backward and the
optimizer step have returned (PyTorch eager).

  python bench/cpu_speed.py                       # all models, batch 128
  python bench/cpu_speed.py --models resnet20 --steps 5 --no-xla
  python bench/cpu_speed.py --tune-malloc         # see --help

PyTorch is optional (pip install torch==2.13.0); its copy of the network is
gpu_throughput.torch_resnet.
"""
import argparse
import functools
import os
import statistics
import sys
import time

import common
from gpu_throughput import torch_resnet, torch_sgd

# name: (num_layers n, shortcut); depth is 6n + 2.
MODELS = {'resnet20': (3, 'conv'), 'resnet20-zeropad': (3, 'zeropad'),
          'cnn20': (3, None), 'resnet56': (9, 'conv')}
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
  p.add_argument('--torch-format', default='both',
                 choices=('nchw', 'channels_last', 'both'))
  p.add_argument('--ynn-convs', action='store_true',
                 help='keep XLA:CPU sending >16-channel convolutions to '
                      'YNNPACK (default: jit with '
                      'resnet_jax.cpu_conv.XLA_CPU_COMPILER_OPTIONS)')
  p.add_argument('--tune-malloc', action='store_true',
                 help='re-run this script with ' + ' '.join(
                     f'{k}={v}' for k, v in MALLOC_ENV.items()))
  common.add_json(p)
  args = p.parse_args()
  if unknown := set(args.models) - set(MODELS):
    p.error(f'unknown models {",".join(unknown)}; choose from '
            f'{", ".join(MODELS)}')
  return args


def load_torch(enabled: bool, threads: int):
  """PyTorch with `threads` intra-op threads, or None (off or not installed)."""
  if not enabled or not common.version('torch'):
    return None
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  return torch


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


def bench_torch(n, shortcut, batch, warmup, steps, channels_last):
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = torch_resnet(n, shortcut=shortcut).train()
  x = torch.randn(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  opt = torch_sgd(model)

  def step(carry):
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return carry

  return common.time_loop(step, None, 1, warmup, repeats=steps,
                          sync=lambda carry: carry)[1]


class OtherLoad:
  """Share of the machine's CPU time used by other processes while timing:
  the numbers compare only when it stays near 0 (PyTorch's OpenMP threads
  slow down many-fold when a core is taken away)."""

  def __init__(self):
    self.start = self._read()

  @staticmethod
  def _read():
    try:
      with open('/proc/stat') as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
      busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
      busy = float('nan')
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system

  def percent(self):
    (w0, b0, own0), (w1, b1, own1) = self.start, self._read()
    cpus = os.cpu_count() or 1
    return max(0.0, 100 * ((b1 - b0) - (own1 - own0)) / ((w1 - w0) * cpus))


def main():
  args = parse_args()
  malloc_tuned = all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())
  if args.tune_malloc and not malloc_tuned:
    os.environ.update(MALLOC_ENV)  # glibc reads these at start-up: re-exec.
    os.execv(sys.executable, [sys.executable] + sys.argv)
  from resnet_jax import cpu_conv  # pylint: disable=import-outside-toplevel
  env = common.environment()
  threads = env['cores']
  fast = cpu_conv.select_conv(cpu_conv.FAST)
  copts = None if args.ynn_convs else cpu_conv.jit_compiler_options(cpu_conv.FAST)
  torch = load_torch(not args.no_torch, threads)
  if not torch and not args.no_torch:
    print('PyTorch not installed: skipping it.')
  formats = {'nchw': [False], 'channels_last': [True],
             'both': [False, True]}[args.torch_format]
  rate = lambda seconds: args.batch_size / statistics.median(seconds)
  rows = common.Rows(args.json, command=' '.join(sys.argv), environment=env)
  for name in args.models:
    n, shortcut = MODELS[name]
    r, load = {'model': name}, OtherLoad()
    for key, conv in (('fast', fast), ('xla', None))[:1 + (not args.no_xla)]:
      print(f'{name}: JAX {key}...', flush=True)
      r[f'{key}_compile'], seconds = bench_jax(
          n, shortcut, conv, args.batch_size, args.warmup, args.steps, copts)
      r[key] = rate(seconds)
    for cl in formats if torch else []:
      print(f'{name}: PyTorch {"channels_last" if cl else "NCHW"}...',
            flush=True)
      r['torch_cl' if cl else 'torch_nchw'] = rate(bench_torch(
          n, shortcut, args.batch_size, args.warmup, args.steps, cl))
    r['other_load'] = load.percent()
    rows.add(r)

  fmt = lambda v, spec='.0f': '-' if v is None else format(v, spec)
  print('\n' + common.table(
      'model', 'JAX fast img/s', 'JAX XLA img/s', 'PyTorch NCHW img/s',
      'PyTorch channels_last img/s', 'fast / best PyTorch', 'fast / XLA',
      'first call s, incl. compile (fast / XLA)', 'other load'))
  print(common.table('---', 9))
  for r in rows:
    best = max([r[k] for k in ('torch_nchw', 'torch_cl') if k in r],
               default=None)
    print(common.table(
        r['model'], fmt(r['fast']), fmt(r.get('xla')),
        fmt(r.get('torch_nchw')), fmt(r.get('torch_cl')),
        fmt(best and r['fast'] / best, '.2f'),
        fmt(r.get('xla') and r['fast'] / r['xla'], '.2f'),
        f"{fmt(r['fast_compile'], '.1f')} / {fmt(r.get('xla_compile'), '.1f')}",
        f"{r['other_load']:.0f}%"))
  print(f'\nbatch {args.batch_size}, float32, median of {args.steps} timed '
        f'steps after {args.warmup} warm-up steps; img/s = batch / median step '
        f'time.\n{common.header(env)}\n{threads} threads available '
        f'(torch.set_num_threads({threads}); XLA uses all of them).\n'
        'other load: CPU used by other processes while the row was timed '
        '(shared machine; only rows near 0% are comparable).\n'
        f'XLA compiler_options: {copts}; malloc tuning: '
        f'{"on" if malloc_tuned else "off"}.')


if __name__ == '__main__':
  main()
