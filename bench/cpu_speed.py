"""CPU training speed against PyTorch: each model's whole train step.

The step: forward, cross-entropy, backward, SGD with Nesterov momentum 0.9
and weight decay 5e-4, BN statistics; float32, one fixed random batch. JAX
is jitted with its state donated, its convolutions through
resnet_jax/cpu_conv.py (`fast`, as in training) or XLA's own (`xla`), its
first call (trace, compile, one step) timed apart; PyTorch runs eager and
channels-last (gpu_throughput.torch_resnet). img/s = batch / median step.

  python bench/cpu_speed.py --tune-malloc  # all models, batch 128
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
  step_rows(args, torch)
  print(f'malloc tuning: {"on" if malloc_tuned else "off"}.')


if __name__ == '__main__':
  main()
