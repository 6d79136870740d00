"""Where the CPU gap to PyTorch lives: one 3x3 convolution at a time.

For each convolution shape of a CIFAR ResNet (batch 128, float32, NHWC), the
forward pass, the input gradient (dx) and the weight gradient (dw) in JAX,
each jitted alone, against PyTorch's forward and its forward + backward
(channels_last, which oneDNN runs natively). The JAX weight gradient is timed
both as XLA builds it and through `resnet_jax/cpu_conv.py`. Two XLA:CPU
routes are compared: Eigen (`resnet_jax.cpu_conv.XLA_CPU_COMPILER_OPTIONS`,
what training uses) and YNNPACK (XLA's default, which takes convolutions with
more than 16 channels).

  python bench/cpu_convs.py                 # all cores
  taskset -c 0 python bench/cpu_convs.py    # one core: kernels alone, and
                                            # steadier on a shared machine

Times are the minimum over --repeats calls (ms); GFLOP/s counts one pass.
"""
import argparse
import functools

import common
from cpu_speed import load_torch
from resnet_jax import cpu_conv

# (input height = width, in channels, out channels, stride): the 3x3
# convolutions of ResNet-20, with how many of each it has (ResNet-56: 3x the
# stride-1 ones of every stage but the stem).
SHAPES = {(32, 3, 16, 1): 1, (32, 16, 16, 1): 6, (32, 16, 32, 2): 1,
          (16, 32, 32, 1): 5, (16, 32, 64, 2): 1, (8, 64, 64, 1): 5}
ROUTES = {
    'eigen': cpu_conv.XLA_CPU_COMPILER_OPTIONS,  # What training uses.
    'ynn': None,  # XLA's defaults.
}


def best_ms(fn, repeats, sync=common.jax_sync):
  """Fastest of `repeats` calls after 3 untimed ones, in ms."""
  return 1e3 * min(common.time_loop(lambda c: fn(), None, 1, 3, repeats,
                                    sync)[1])


def jax_times(hw, c, out, stride, batch, route, repeats):
  import jax  # pylint: disable=import-outside-toplevel
  from jax import lax  # pylint: disable=import-outside-toplevel
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
      fn, compiler_options=ROUTES[route]), x, w, g), repeats)
          for name, fn in fns.items()}


def torch_times(hw, c, out, stride, batch, repeats):
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


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch-size', type=int, default=128)
  p.add_argument('--repeats', type=int, default=15)
  p.add_argument('--no-torch', action='store_true')
  common.add_json(p)
  args = p.parse_args()
  rows = common.start_table(
      args, 'conv (HxW, in->out, stride)', 'GFLOP', 'route', 'JAX fwd',
      'JAX dx', 'JAX dw (XLA / cpu_conv)', 'JAX fwd+dx+dw', 'PyTorch fwd',
      'PyTorch fwd+bwd', 'JAX / PyTorch')
  torch = load_torch(not args.no_torch, rows.fields['environment']['cores'])
  sums = dict.fromkeys([*ROUTES, 'torch'], 0.0)
  nan = float('nan')
  for (hw, c, out, stride), count in SHAPES.items():
    gflop = 2 * args.batch_size * (hw // stride) ** 2 * 9 * c * out / 1e9
    ref = torch_times(hw, c, out, stride, args.batch_size,
                      args.repeats) if torch else {}
    sums['torch'] += count * ref.get('fwd_bwd', nan)
    for route in ROUTES:
      t = jax_times(hw, c, out, stride, args.batch_size, route, args.repeats)
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


if __name__ == '__main__':
  main()
