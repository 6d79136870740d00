"""Several members in one jitted step: total train images/s against N.

Times the product's step (train.make_train_fn, vmapped over train.num_seeds
members) fed as a run feeds it (gpu_throughput.bench_jax), for each member
count N: total images/s (N x batch / step time) and the step time relative
to one member; per train.member_chunk (0: auto, one member per jitted call
on the CPU backend, all at once elsewhere) and model.conv_impl (matmul:
vmapped convolutions as batched matrix products). On a CPU expect about N x;
the goal on a GPU is 8 members in at most 2x the time of one.

  python bench/members.py                                  # N = 1, 2, 4, 8
  python bench/members.py --members 1,2,4,8,16,32 --steps 50   # a GPU
  python bench/members.py --members 1,8 --member_chunk 0,1 --conv_impl auto,matmul
"""
import argparse

import common
from gpu_throughput import DEPTH, add_feed_args, bench_jax


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--members', type=common.ints, default='1,2,4,8',
                 help='comma-separated member counts (train.num_seeds)')
  p.add_argument('--model', default='resnet20', choices=sorted(DEPTH))
  p.add_argument('--batch-size', type=int, default=128)
  p.add_argument('--dtype', default='float32')
  common.add_steps(p, steps=10, warmup=2)
  p.add_argument('--member_chunk', type=common.ints, default='0',
                 help='train.member_chunk, comma-separated to compare: members '
                 'vmapped at a time (0: auto, 1 on the CPU backend, all at '
                 'once elsewhere; 1: one member per jitted call, no grouped '
                 'convolutions)')
  p.add_argument('--conv_impl', type=common.names, default='auto',
                 help='model.conv_impl, comma-separated to compare (auto: '
                 "XLA's convolutions off the CPU; matmul: batched matrix "
                 'products when vmapped); later ones skip member_chunk 1, '
                 'the one-member program of the 1-member row')
  add_feed_args(p)
  args = p.parse_args()
  from resnet_jax import config as config_lib, train  # pylint: disable=import-outside-toplevel
  auto = train.member_chunk_auto(config_lib.base_config()) or 'all'
  print(f'# {args.model}, batch {args.batch_size} per member, {args.dtype}, '
        f'member_chunk 0 is auto ({auto})')
  rows = common.start_table(args, 'members', 'member_chunk', 'conv_impl',
                            'total img/s', 'step ms', 'step time vs 1 member',
                            'compile s')
  one_step = None  # One member of the first conv_impl: the base.
  for impl_index, impl in enumerate(args.conv_impl):
    for count in args.members:
      # One member is one program whatever the chunk: timed once. Past the
      # first conv_impl, chunks of one member (nothing vmapped, so nothing
      # for a formulation of members to change) are skipped.
      for chunk in args.member_chunk[:1] if count == 1 else [
          c for c in args.member_chunk if not (impl_index and c == 1)]:
        rate, compile_s = bench_jax(DEPTH[args.model], args.batch_size,
                                    args.dtype, args.steps, args.warmup,
                                    num_seeds=count, member_chunk=chunk,
                                    examples=args.examples, conv_impl=impl)
        step_ms = 1000 * count * args.batch_size / rate
        one_step = one_step or (step_ms if count == 1 else None)
        print(common.table(
            count, chunk, impl, f'{rate:,.0f}', f'{step_ms:.1f}',
            f'{step_ms / one_step:.2f}x' if one_step else '-',
            f'{compile_s:.1f}'), flush=True)
        rows.add({'members': count, 'member_chunk': chunk, 'conv_impl': impl,
                  'images_per_sec': rate, 'step_ms': step_ms,
                  'compile_s': compile_s, 'examples': args.examples})


if __name__ == '__main__':
  main()
