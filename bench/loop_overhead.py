"""The training loop's own ceiling: steps/s when the model costs nothing.

    python bench/loop_overhead.py [--steps 2000] [--log_every 1,10,100] [--profile]

Runs the real train.train_and_evaluate (batch sampling from the on-device
dataset, augmentation, the jitted step, metric fetches every log_every, the
progress bar, reporting, the final save) with ResNet swapped for a model of
negligible cost (global mean pool, BatchNorm, a dense layer) on 8x8
synthetic images, batch 8. Each figure is the difference of two runs
(--steps and 2x --steps), so compilation, setup and the final evaluation
and save cancel out. --profile adds cProfile's top host functions of a
third, untimed run. Prints the CPU model and versions with the figures.
"""
import argparse
import cProfile
import io
import pstats
import tempfile
import time
import unittest.mock

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from cpu_speed import cpu_model  # bench/, the script's folder.
from resnet_jax import config as config_lib
from resnet_jax import train


class Negligible(nn.Module):
  """Mean pool, BatchNorm (the train state expects batch_stats), dense."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):  # pylint: disable=redefined-outer-name
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(self.num_classes)(x)


def bench_config(steps: int, log_every: int):
  c = config_lib.base_config()
  c.data.source = 'synthetic'
  c.data.image_size = 8
  c.data.synthetic_examples = 512
  c.train.batch_size = 8
  c.train.eval_batch_size = 64
  c.train.steps = steps
  c.train.warmup_steps = 0
  c.train.eval_every = steps  # One evaluation, at the end.
  c.train.log_every = log_every
  return c


def run(steps: int, log_every: int, profiler=None) -> float:
  """Seconds for a whole train_and_evaluate of `steps` steps."""
  with tempfile.TemporaryDirectory() as workdir, unittest.mock.patch.object(
      train, 'create_model', lambda config: Negligible(
          config.model.num_classes)):
    start = time.perf_counter()
    if profiler:
      profiler.enable()
    train.train_and_evaluate(bench_config(steps, log_every), workdir)
    if profiler:
      profiler.disable()
    return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--log_every', default='1,10,100')
  parser.add_argument('--profile', action='store_true')
  args = parser.parse_args()
  print(f'{cpu_model()}, {jax.device_count()} x {jax.devices()[0].platform}, '
        f'jax {jax.__version__}, flax {flax.__version__}')
  for log_every in map(int, args.log_every.split(',')):
    run(min(args.steps, 50), log_every)  # Warm: compile caches, imports.
    short = run(args.steps, log_every)
    long = run(2 * args.steps, log_every)
    per_step = (long - short) / args.steps
    print(f'log_every={log_every:4d}: {1 / per_step:7.0f} steps/s '
          f'({per_step * 1e3:.3f} ms per step of the loop; runs of '
          f'{args.steps} and {2 * args.steps} steps took {short:.1f} s and '
          f'{long:.1f} s)', flush=True)
    if args.profile:  # A run of its own: the profiler slows what it sees.
      profiler = cProfile.Profile()
      run(args.steps, log_every, profiler)
      out = io.StringIO()
      pstats.Stats(profiler, stream=out).sort_stats('tottime').print_stats(12)
      print(out.getvalue())


if __name__ == '__main__':
  main()
