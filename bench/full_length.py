"""The original table's three models at their full budget, in one command
(bench/README.md): three processes sharing one accelerator (--sequential:
one after another), then each last checkpoint evaluated on the validation
split, single view and with flip TTA. Training stops at --limit seconds
(SIGTERM: each run saves, and the same command resumes it); the JSON at
--out is rewritten as each run and evaluation ends.
"""
import argparse
import os
import shlex
import signal
import subprocess
import sys
import time

import common
from common import ROOT
from gpu_check import TINY_DATA, main_command
from resnet_jax import reporting

MODELS = {'resnet20_zeropad': 'resnet_zeropad.py',
          'resnet20_conv': 'resnet_conv.py', 'cnn20': 'cnn.py'}
# 64,000 x 128 images at batch 512; base_config's warmup (1,000 steps) and
# evaluations (every 1,000) kept in images; config.gpu_recipe's scaling.
GPU_RECIPE = ['--config.train.batch_size=512', '--config.train.steps=16000',
              '--config.train.learning_rate=0.4',
              '--config.train.warmup_steps=250',
              '--config.train.eval_every=250', '--config.train.dtype=bfloat16']
TINY = [*TINY_DATA, '--config.train.steps=8', '--config.train.eval_every=4',
        '--config.train.warmup_steps=2']


def command(name, workdir, extra):
  return main_command(MODELS[name], os.path.join(workdir, name), *extra)


def train_all(args, extra, report, write):
  """Starts the runs (all at once unless --sequential); SIGTERM at the
  deadline. Fills report['runs'][name]."""
  deadline = time.time() + args.limit
  env = dict(os.environ)
  if not args.sequential:
    # Three processes on one GPU: each may take a third of its memory (JAX
    # would otherwise preallocate 75% in the first).
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '.3')
  pending = list(args.models)
  running = {}
  while pending or running:
    while pending and (not args.sequential or not running):
      name = pending.pop(0)
      cmd = command(name, args.workdir, extra)
      os.makedirs(args.workdir, exist_ok=True)
      log = open(os.path.join(args.workdir, f'{name}.log'), 'w')  # pylint: disable=consider-using-with
      running[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT),
                       time.time(), log)
      report['runs'][name] = {'command': shlex.join(cmd)}
    for name, (child, started, log) in list(running.items()):
      if child.poll() is None and time.time() > deadline:
        child.send_signal(signal.SIGTERM)  # Saves its step, then exits.
        try:
          child.wait(60)
        except subprocess.TimeoutExpired:
          child.kill()
      if child.poll() is None:
        continue
      log.close()
      run_dir = os.path.join(args.workdir, name)
      history = (reporting.read_history(run_dir) if os.path.exists(
          os.path.join(run_dir, 'metrics.jsonl')) else [])
      steps = [r['step'] for r in history if 'step' in r]
      validations = [r for r in history if 'val_accuracy' in r]
      report['runs'][name].update(
          exit_code=child.returncode, seconds=round(time.time() - started, 1),
          last_step=max(steps, default=0),
          # The run's own last validation (metrics.jsonl), single view as
          # these configs evaluate: single_view below must reproduce it.
          last_val_accuracy=(validations[-1]['val_accuracy']
                             if validations else None),
          finished=child.returncode == 0)
      del running[name]
      write()
    time.sleep(0.2)


def evaluate_all(args, extra, report, write):
  """Each run's last checkpoint on the validation split, both views."""
  for name in args.models:
    for view, flip in (('single_view', False), ('flip_tta', True)):
      cmd = command(name, args.workdir, extra) + [
          '--mode=evaluate', '--split=val', '--checkpoint=latest',
          f'--config.train.eval_flip={flip}']
      result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              check=False)
      entry = {'command': shlex.join(cmd)}
      if result.returncode == 0:
        out = common.last_json(result.stdout)
        entry.update(accuracy=out['accuracy'], loss=out['loss'],
                     step=out['step'], examples=out['num_examples'])
      else:
        entry['error'] = (result.stderr.strip().splitlines() or ['?'])[-1]
      report['runs'][name][view] = entry
      write()


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--data', help='a cifar-10-batches-bin folder')
  p.add_argument('--workdir', required=True, help='one workdir per model')
  p.add_argument('--out', required=True, help='the JSON of figures')
  p.add_argument('--recipe', choices=('128', 'gpu'), default='128',
                 help='128: the configs as they are (64,000 x 128); gpu: '
                 'the same epochs at batch 512, bfloat16')
  p.add_argument('--models', default=','.join(MODELS),
                 help=f'comma-separated, of {",".join(MODELS)}')
  p.add_argument('--limit', type=float, default=450,
                 help='seconds of training, all runs together')
  p.add_argument('--sequential', action='store_true',
                 help='one run at a time (default: all three at once)')
  p.add_argument('--tiny', action='store_true',
                 help='a rehearsal: synthetic data, a tiny model, 8 steps')
  args = p.parse_args()
  args.models = common.names(args.models)
  if unknown := set(args.models) - set(MODELS):
    p.error(f'unknown models: {",".join(sorted(unknown))}')
  if args.tiny:
    extra = list(TINY)
  elif args.data:
    extra = ['--config.data.source=cifar10_binary',
             f'--config.data.dir={os.path.abspath(args.data)}']
  else:
    p.error('--data=DIR or --tiny')
  if args.recipe == 'gpu' and not args.tiny:
    extra += GPU_RECIPE
  report = {'command': shlex.join([sys.executable, *sys.argv]),
            'recipe': args.recipe,
            'environment': common.environment_in_child(), 'runs': {}}
  write = lambda: common.write_json(args.out, report)
  write()
  train_all(args, extra, report, write)
  evaluate_all(args, extra, report, write)
  for name, run in report['runs'].items():
    print(f'{name}: step {run["last_step"]} in {run["seconds"]} s, val '
          f'{run["single_view"].get("accuracy")} single view, '
          f'{run["flip_tta"].get("accuracy")} flip TTA')
  return 0 if succeeded(report) else 1


def succeeded(report) -> bool:
  """Every run finished and both its evaluations gave figures."""
  return all(r['finished'] and 'error' not in r['single_view']
             and 'error' not in r['flip_tta'] for r in report['runs'].values())


if __name__ == '__main__':
  sys.exit(main())
