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

PyTorch is optional (pip install torch==2.13.0); bench/torch_resnet.py holds
its copy of the network.
"""
import argparse
import functools
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# name: (num_layers n, shortcut); depth is 6n + 2.
MODELS = {
    'resnet20': (3, 'conv'),
    'resnet20-zeropad': (3, 'zeropad'),
    'cnn20': (3, None),
    'resnet56': (9, 'conv'),
}
# glibc returns big freed blocks to the OS, so every step of either framework
# page-faults its activations in again (~75k faults/step for ResNet-20 here).
MALLOC_ENV = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
              'MALLOC_TRIM_THRESHOLD_': str(1 << 40)}
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default=','.join(MODELS),
                 help=f'comma-separated subset of {",".join(MODELS)}')
  p.add_argument('--batch-size', type=int, default=128)
  p.add_argument('--steps', type=int, default=10, help='timed steps')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps')
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
  return p.parse_args()


def load_torch(enabled: bool, threads: int):
  """PyTorch with `threads` intra-op threads, or None (off or not installed)."""
  if not enabled:
    return None
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    print('PyTorch not installed: skipping it.')
    return None
  torch.set_num_threads(threads)
  return torch


def median_rate(batch, seconds):
  return batch / statistics.median(seconds)


def time_steps(run_step, warmup, steps):
  for _ in range(warmup):
    run_step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - t)
  return times


def bench_jax(n, shortcut, conv, batch, warmup, steps, compiler_options):
  import jax
  import jax.numpy as jnp
  import optax
  from resnet_jax.models import ResNet

  model = ResNet(num_layers=n, shortcut=shortcut, conv_general_dilated=conv)
  kx, ky, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (batch, 32, 32, 3), jnp.float32)
  y = jax.random.randint(ky, (batch,), 0, 10)
  variables = model.init(kp, x[:1], train=False)
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                   optax.sgd(LR, momentum=MOMENTUM, nesterov=True))
  state = [variables['params'], variables['batch_stats']]
  state.append(tx.init(state[0]))

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2),
                     compiler_options=compiler_options)
  def step(params, batch_stats, opt_state, x, y):
    def loss_fn(p):
      logits, updates = model.apply({'params': p, 'batch_stats': batch_stats},
                                    x, train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates['batch_stats']
    (loss, batch_stats), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  def run_step():
    *new_state, loss = step(*state, x, y)
    state[:] = new_state
    jax.block_until_ready(loss)

  t = time.perf_counter()
  run_step()  # Compiles.
  compile_s = time.perf_counter() - t
  return compile_s, time_steps(run_step, warmup, steps)


def bench_torch(n, shortcut, batch, warmup, steps, channels_last):
  import torch
  from torch_resnet import ResNet

  torch.manual_seed(0)
  model = ResNet(n, shortcut=shortcut).train()
  x = torch.randn(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                        nesterov=True, weight_decay=WEIGHT_DECAY)

  def run_step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

  return time_steps(run_step, warmup, steps)


class OtherLoad:
  """Share of the machine's CPU time used by other processes while timing.

  The numbers are only comparable when this stays near 0: on a shared machine
  PyTorch's OpenMP threads in particular slow down many-fold when a core is
  taken away.
  """

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


def cpu_model():
  """'AMD EPYC (family 25 model 17, AVX-512)': the name alone can hide the
  generation, and AVX-512 changes XLA:CPU's speed."""
  try:
    with open('/proc/cpuinfo') as f:
      info = dict(line.split(':', 1) for line in f.read().split('\n\n')[0]
                  .splitlines() if ':' in line)
  except OSError:
    return platform.processor() or 'unknown'
  info = {k.strip(): v.strip() for k, v in info.items()}
  vector = 'AVX-512' if 'avx512f' in info.get('flags', '').split() else 'no AVX-512'
  return (f'{info.get("model name", "unknown")} (family '
          f'{info.get("cpu family", "?")} model {info.get("model", "?")}, '
          f'{vector})')


def main():
  args = parse_args()
  if args.tune_malloc and any(os.environ.get(k) != v
                              for k, v in MALLOC_ENV.items()):
    os.environ.update(MALLOC_ENV)  # glibc reads these at start-up: re-exec.
    os.execv(sys.executable, [sys.executable] + sys.argv)
  models = args.models.split(',')
  for m in models:
    if m not in MODELS:
      sys.exit(f'unknown model {m!r}; choose from {", ".join(MODELS)}')

  import jax
  import jaxlib
  import flax
  from resnet_jax import cpu_conv

  threads = len(os.sched_getaffinity(0))
  fast = cpu_conv.select_conv(cpu_conv.FAST)
  copts = None if args.ynn_convs else cpu_conv.jit_compiler_options(cpu_conv.FAST)
  torch = load_torch(not args.no_torch, threads)
  formats = {'nchw': [False], 'channels_last': [True],
             'both': [False, True]}[args.torch_format]

  rows = []
  for name in models:
    n, shortcut = MODELS[name]
    r = {'model': name}
    load = OtherLoad()
    print(f'{name}: JAX fast...', flush=True)
    r['fast_compile'], t = bench_jax(n, shortcut, fast, args.batch_size,
                                     args.warmup, args.steps, copts)
    r['fast'] = median_rate(args.batch_size, t)
    if not args.no_xla:
      print(f'{name}: JAX XLA...', flush=True)
      r['xla_compile'], t = bench_jax(n, shortcut, None, args.batch_size,
                                      args.warmup, args.steps, copts)
      r['xla'] = median_rate(args.batch_size, t)
    if torch is not None:
      for cl in formats:
        key = 'torch_cl' if cl else 'torch_nchw'
        print(f'{name}: PyTorch {"channels_last" if cl else "NCHW"}...',
              flush=True)
        r[key] = median_rate(args.batch_size, bench_torch(
            n, shortcut, args.batch_size, args.warmup, args.steps, cl))
    r['other_load'] = load.percent()
    rows.append(r)

  fmt = lambda v, spec='.0f': '-' if v is None else format(v, spec)
  print()
  print('| model | JAX fast img/s | JAX XLA img/s | PyTorch NCHW img/s '
        '| PyTorch channels_last img/s | fast / best PyTorch '
        '| fast / XLA | first call s, incl. compile (fast / XLA) | other load |')
  print('|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    best = max([r[k] for k in ('torch_nchw', 'torch_cl') if k in r],
               default=None)
    print(f"| {r['model']} | {fmt(r['fast'])} | {fmt(r.get('xla'))} "
          f"| {fmt(r.get('torch_nchw'))} | {fmt(r.get('torch_cl'))} "
          f"| {fmt(best and r['fast'] / best, '.2f')} "
          f"| {fmt(r.get('xla') and r['fast'] / r['xla'], '.2f')} "
          f"| {fmt(r['fast_compile'], '.1f')} / "
          f"{fmt(r.get('xla_compile'), '.1f')} | {r['other_load']:.0f}% |")
  print()
  print(f'batch {args.batch_size}, float32, median of {args.steps} timed steps '
        f'after {args.warmup} warm-up steps; img/s = batch / median step time.')
  print(f'jax {jax.__version__}, jaxlib {jaxlib.__version__}, '
        f'flax {flax.__version__}, '
        f'torch {torch.__version__ if torch else "-"}; '
        f'python {platform.python_version()}')
  print(f'CPU: {cpu_model()}; {threads} threads available '
        f'(torch.set_num_threads({threads}); XLA uses all of them).')
  print('other load: CPU used by other processes while the row was timed '
        '(shared machine; only rows near 0% are comparable).')
  print(f'XLA compiler_options: {copts}; malloc tuning: '
        f'{"on" if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()) else "off"}.')


if __name__ == '__main__':
  main()
