"""The training loop's own ceiling: steps/s of the real loop on tiny images.

Runs train.train_and_evaluate on synthetic images of --image-size pixels,
batch 8, so that what is left is the loop: with the real ResNet-20 state or
a negligible model. Each figure is the difference of a run of --steps and
one of twice that (each the fastest of --repeats): compilation and setup
cancel. --profile adds cProfile's top host functions of a third run.
"""
import argparse
import cProfile
import io
import pstats
import tempfile
import time

import common
import flax.linen as nn
import jax.numpy as jnp

from gpu_throughput import VAL_EXAMPLES, train_on_synthetic
from resnet_jax import config as config_lib
from resnet_jax import models, train


class Negligible(nn.Module):
  """Mean pool, BatchNorm (the train state expects batch_stats), dense."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):  # pylint: disable=redefined-outer-name
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(self.num_classes)(x)


# A model is a registry entry (models.MODELS), as a user's own would be.
models.MODELS.setdefault(
    'negligible', lambda model_config, **_: Negligible(model_config.num_classes))


def bench_config(model: str, examples: int, image_size: int, steps: int,
                 log_every: int):
  c = train_on_synthetic(config_lib.base_config(), examples)
  c.model.name = 'resnet' if model == 'resnet20' else model
  c.data.image_size = image_size
  c.train.batch_size = 8
  c.train.eval_batch_size = VAL_EXAMPLES  # One small evaluation per run.
  c.train.steps = steps
  c.train.warmup_steps = 0
  c.train.eval_every = steps  # One evaluation, at the end.
  c.train.log_every = log_every
  return c


def run(config, profiler=None) -> float:
  """Seconds for a whole train_and_evaluate of `config`."""
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    if profiler:
      profiler.enable()
    train.train_and_evaluate(config, workdir)
    if profiler:
      profiler.disable()
    return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='negligible',
                      choices=('resnet20', 'negligible'))
  parser.add_argument('--examples', type=common.ints, default='512',
                      help='comma-separated training-set sizes')
  parser.add_argument('--image-size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--log_every', type=common.ints, default='1,10,100')
  parser.add_argument('--repeats', type=int, default=2,
                      help='runs of each length; the fastest counts')
  parser.add_argument('--profile', action='store_true')
  args = parser.parse_args()
  print(f'{common.header(common.environment())}\n# model {args.model}, '
        f'{args.image_size}x{args.image_size} images, batch 8', flush=True)
  for log_every in args.log_every:
    first = None
    for examples in args.examples:
      config = lambda steps, n=examples: bench_config(
          args.model, n, args.image_size, steps, log_every)
      run(config(min(args.steps, 50)))  # Warm: compile caches, imports.
      # The best of --repeats: a shared 2-core machine varies by ~10%.
      short = min(run(config(args.steps)) for _ in range(args.repeats))
      long = min(run(config(2 * args.steps)) for _ in range(args.repeats))
      steps_per_sec = args.steps / (long - short)
      first = first or steps_per_sec
      print(f'log_every={log_every:4d} examples={examples:6d}: '
            f'{steps_per_sec:7.0f} steps/s ({1e3 / steps_per_sec:.3f} ms per '
            f'step of the loop, {steps_per_sec / first:.0%} of the first '
            f'size; runs of {args.steps} and {2 * args.steps} steps took '
            f'{short:.1f} s and {long:.1f} s)', flush=True)
      if args.profile:  # A run of its own: the profiler slows what it sees.
        profiler = cProfile.Profile()
        run(config(args.steps), profiler)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats('tottime').print_stats(12)
        print(out.getvalue())


if __name__ == '__main__':
  main()
