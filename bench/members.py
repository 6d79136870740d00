"""Several members in one jitted step: total train images/s against N.

Times resnet_jax.train.make_train_fn (the product's step, vmapped over
train.num_seeds members) on synthetic 32x32 data held on the device (45,000
training images, each member with its own order drawn once per epoch, as
in a run; --examples), for
each member count N: total images/s (N x batch / step time) and the step
time relative to one member. On an accelerator that is underused by one
ResNet-20 at batch 128 the step time should grow far slower than N (goal on
a GPU: 8 members in at most 2x the time of one); on a CPU, whose cores one
member already fills, expect about N x, which train.member_chunk's default
(0: auto, one member per chunk on the CPU backend) gives: 8.1x for 8
members where all vmapped at once (--member_chunk 8) take 15x
(docs/training.md). The header line says which chunk size ran.
--conv_impl auto,matmul adds members' other formulation (resnet_jax/
matmul_conv.py: vmapped convolutions as batched matrix products, not
grouped convolutions) after the rows of the first.

  python bench/members.py                                  # N = 1, 2, 4, 8
  python bench/members.py --members 1,2,4,8,16,32 --steps 50   # a GPU
  python bench/members.py --members 1,2 --steps 2 --warmup 1   # a smoke test
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_speed import cpu_model  # pylint: disable=wrong-import-position
from gpu_throughput import DEPTH, EXAMPLES, bench_jax, write_json  # pylint: disable=wrong-import-position


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--members', default='1,2,4,8',
                 help='comma-separated member counts (train.num_seeds)')
  p.add_argument('--model', default='resnet20', choices=sorted(DEPTH))
  p.add_argument('--batch-size', type=int, default=128)
  p.add_argument('--dtype', default='float32')
  p.add_argument('--steps', type=int, default=10, help='timed steps')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps')
  p.add_argument('--member_chunk', default='0',
                 help='train.member_chunk, comma-separated to compare: members '
                 'vmapped at a time (0: auto, 1 on the CPU backend, all at '
                 'once elsewhere; 1: one member per jitted call, no grouped '
                 'convolutions)')
  p.add_argument('--conv_impl', default='auto',
                 help='model.conv_impl, comma-separated to compare (auto: '
                 "XLA's convolutions off the CPU; matmul: batched matrix "
                 'products when vmapped); later ones skip member_chunk 1, '
                 'the one-member program of the 1-member row')
  p.add_argument('--examples', type=int, default=EXAMPLES,
                 help='training-set size each member samples from (1024: the '
                 'old 8 batches of 128)')
  p.add_argument('--json', metavar='FILE',
                 help='also write the rows here, rewritten after each row')
  args = p.parse_args()
  import jax
  device = jax.devices()[0]
  where = (device.device_kind if device.platform != 'cpu'
           else f'{cpu_model()}, {os.cpu_count()} cores')
  from resnet_jax import config as config_lib, train
  auto = train.member_chunk_auto(config_lib.base_config()) or 'all'
  print(f'# jax {jax.__version__} on {where}; {args.model}, batch '
        f'{args.batch_size} per member, {args.dtype}, member_chunk 0 is auto '
        f'({auto}); command: {" ".join(sys.argv)}')
  print('| members | member_chunk | conv_impl | total img/s | step ms | '
        'step time vs 1 member | compile s |')
  print('|---|---|---|---|---|---|---|')
  rows, one_step = [], None  # One member of the first conv_impl: the base.
  chunks = list(map(int, args.member_chunk.split(',')))
  for impl_index, impl in enumerate(args.conv_impl.split(',')):
    for count in map(int, args.members.split(',')):
      # One member is one program whatever the chunk: timed once. Past the
      # first conv_impl, chunks of one member (nothing vmapped, so nothing
      # for a formulation of members to change) are skipped.
      for chunk in chunks[:1] if count == 1 else [
          c for c in chunks if not (impl_index and c == 1)]:
        rate, compile_s = bench_jax(DEPTH[args.model], args.batch_size,
                                    args.dtype, args.steps, args.warmup,
                                    num_seeds=count, member_chunk=chunk,
                                    examples=args.examples, conv_impl=impl)
        step_ms = 1000 * count * args.batch_size / rate
        one_step = one_step or (step_ms if count == 1 else None)
        relative = f'{step_ms / one_step:.2f}x' if one_step else '-'
        print(f'| {count} | {chunk} | {impl} | {rate:,.0f} | {step_ms:.1f} | '
              f'{relative} | {compile_s:.1f} |', flush=True)
        rows.append({'members': count, 'member_chunk': chunk,
                     'conv_impl': impl, 'images_per_sec': rate,
                     'step_ms': step_ms, 'compile_s': compile_s,
                     'examples': args.examples})
        if args.json:  # Row by row: a run stopped midway keeps its rows.
          write_json(args.json, {'command': ' '.join(sys.argv),
                                 'device': where, 'jax': jax.__version__,
                                 'rows': rows})


if __name__ == '__main__':
  main()
