"""How long a run takes to stop on SIGTERM: seconds from the signal to the
process's exit, and the steps the devices ran after it.

Each trial runs resnet_jax.main on synthetic CIFAR-sized data (default
log_every and eval_every, so a save may fall anywhere), sends SIGTERM at a
random moment `--after` to `--after` + `--spread` seconds after the start
(past compilation), and reads the run's last line. A grace period must cover
the seconds printed here plus a margin.
"""
import argparse
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import common

STOPPED = re.compile(r'stopped by SIGTERM at step (\d+) \((\d+) after the '
                     r'signal\)')


def trial(config: str, after: float, overrides: list) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'resnet_jax.main', f'--config={config}',
         f'--workdir={workdir}', '--config.data.source=synthetic',
         '--config.data.synthetic_examples=50000', *overrides],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    exit_s = time.perf_counter() - sent
  last = err.strip().splitlines()[-1] if err.strip() else ''
  match = STOPPED.search(last)
  return {'config': config, 'signal_after_s': round(after, 2),
          'exit_s': round(exit_s, 2), 'returncode': proc.returncode,
          'stopped_at_step': int(match[1]) if match else None,
          'steps_after_signal': int(match[2]) if match else None,
          'last_line': last[-300:]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/resnet_conv.py')
  parser.add_argument('--trials', type=int, default=3)
  parser.add_argument('--after', type=float, default=30.0,
                      help='earliest signal, seconds after the start')
  parser.add_argument('--spread', type=float, default=10.0)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', help='rewritten after each trial')
  parser.add_argument('overrides', nargs='*', help='after --: config flags')
  args = parser.parse_args()
  rng = random.Random(args.seed)
  rows = common.Rows(args.json, command=' '.join(sys.argv))
  for _ in range(args.trials):
    rows.add(trial(args.config, args.after + rng.uniform(0, args.spread),
                   args.overrides))
    print(json.dumps(rows[-1]), flush=True)
  stopped = [r for r in rows if r['steps_after_signal'] is not None]
  if stopped:
    print(f'{len(stopped)} of {len(rows)} stopped by the signal: exit '
          f'{max(r["exit_s"] for r in stopped):.2f} s at most after it, '
          f'{max(r["steps_after_signal"] for r in stopped)} steps at most')
  sys.exit(0 if len(stopped) == len(rows) else 1)


if __name__ == '__main__':
  main()
