"""Wall time from process start to a validation accuracy, for a shipped config.

Starts `python -m resnet_jax.main` as a child process, watches its
metrics.jsonl and reports when the first evaluation reaches --target (the
clock starts before the child starts, so imports, data loading and
compilation count). Example, on a GPU machine:

  python bench/time_to_accuracy.py --target=0.9125 -- \
    --config=configs/resnet_conv.py --config.data.source=cifar10_binary \
    --config.data.dir=../shared/data/cifar10/cifar-10-batches-bin \
    --config.train.eval_every=350
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--target', type=float, default=0.9125)
  parser.add_argument('--workdir', default=None,
                      help='default: a fresh temporary folder')
  parser.add_argument('main_args', nargs='+',
                      help='arguments for resnet_jax.main, after --')
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix='tta-')
  metrics = os.path.join(workdir, 'metrics.jsonl')
  start = time.perf_counter()
  child = subprocess.Popen([sys.executable, '-m', 'resnet_jax.main',
                            f'--workdir={workdir}', *args.main_args],
                           stdout=subprocess.DEVNULL)
  seen, reached = 0, None
  while reached is None:
    done = child.poll() is not None
    if os.path.exists(metrics):
      with open(metrics) as f:
        lines = f.read().splitlines()
      for line in lines[seen:]:
        record = json.loads(line) if line.endswith('}') else {}
        if record.get('val_accuracy', 0) >= args.target:
          reached = (time.perf_counter() - start, record)
          break
        seen += bool(record)
    if done:
      break
    time.sleep(0.05)
  total = time.perf_counter() - start
  if reached is None:
    child.wait()
    print(json.dumps({'target': args.target, 'reached': False,
                      'wall_time_s': round(total, 1), 'workdir': workdir,
                      'exit_code': child.returncode}))
    sys.exit(1)
  seconds, record = reached
  print(json.dumps({'target': args.target, 'reached': True,
                    'seconds_from_start': round(seconds, 1),
                    'step': record['step'], 'epoch': round(record['epoch'], 2),
                    'val_accuracy': record['val_accuracy'],
                    'workdir': workdir}))
  child.terminate()  # SIGTERM: the run saves a checkpoint and stops.
  child.wait()


if __name__ == '__main__':
  main()
