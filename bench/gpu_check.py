"""The GPU check: smoke-tests training on this machine's accelerator and
measures it, writing every figure, with the command that gave it, to one JSON.

  python bench/gpu_check.py --data=DIR     # on a GPU box: under 6 minutes
  python bench/gpu_check.py --tiny         # rehearsal anywhere (synthetic
                                           # data, tiny model)
  python bench/gpu_check.py --dry-run ...  # print the plan, run nothing

DIR is a cifar-10-batches-bin folder. The stages (STAGES; docs/
gpus_and_clusters.md has their table): smoke (train float32, --mode=evaluate
on its checkpoint, SIGKILL after the first checkpoint and resume, which must
equal an uninterrupted twin), tests (a handful of the suite's), throughput
(gpu_throughput.py), members (members.py), accuracy and accuracy_gpu
(time_to_accuracy.py with the batch-128 and batch-512 recipes). Each is a
child process with its own time limit, so one that fails or hangs is
recorded and the others still run; the JSON is rewritten as each stage
ends. A stage fails, and so does the check (exit 1), if its child or one of
its checks does: a green check holds. smoke and tests ask XLA for
deterministic GPU kernels (DETERMINISTIC): otherwise atomic accumulations
make a resumed run differ from its twin in the last bits.

The limits come from an H200's figures: a resnet_jax.main process took ~30 s
to its first step before the compilation cache, the default grid of 8
throughput rows 210 s, the batch-128 30-epoch run 96.5 s. Later stages find
most programs in the compilation cache.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import common
from common import BENCH, ROOT, last_json
from resnet_jax import reporting

TESTS = ('tests/test_models.py',
         'tests/test_train.py::test_training_learns_and_writes_its_workdir',
         'tests/test_train.py::test_resume_matches_an_uninterrupted_run',
         'tests/test_train.py::test_bfloat16_run_learns_with_float32_state',
         'tests/test_train.py::'
         'test_evaluate_restored_checkpoint_reproduces_validation_metrics')


# --tiny's data and model: synthetic images, a tiny ResNet (also
# bench/full_length.py's rehearsal).
TINY_DATA = ['--config.data.source=synthetic', '--config.data.image_size=16',
             '--config.data.synthetic_examples=160',
             '--config.data.val_fraction=0.2', '--config.model.num_layers=1',
             '--config.train.batch_size=16',
             '--config.train.eval_batch_size=20']


def stage_args(args):
  """Per-stage settings: the real ones, or --tiny's (synthetic, seconds)."""
  if args.tiny:
    return dict(data=TINY_DATA, steps=8, eval_every=4, warmup=2, target=0.0,
                throughput=['--models', 'resnet8', '--batch-sizes', '16',
                            '--dtypes', 'float32', '--steps', '2',
                            '--warmup', '1', '--examples', '128'],
                members=['--model', 'resnet8', '--batch-size', '16',
                         '--members', '1,2', '--member_chunk', '0,1',
                         '--conv_impl', 'auto,matmul', '--steps', '2', '--warmup', '1', '--examples', '128'],
                accuracy=['--config.train.steps=8',
                          '--config.train.eval_every=4',
                          '--config.train.warmup_steps=2'])
  data = ['--config.data.source=cifar10_binary',
          f'--config.data.dir={os.path.abspath(args.data)}']
  return dict(data=data, steps=600, eval_every=200, warmup=100, target=0.9125,
              throughput=['--models', 'resnet20', '--batch-sizes', '128,512',
                          '--dtypes', 'float32,bfloat16', '--steps', '30',
                          '--warmup', '3'],
              # All 8 vmapped (grouped convolutions), one per call, and all
              # vmapped as batched matrix products (model.conv_impl=matmul).
              members=['--members', '1,8', '--member_chunk', '0,1',
                       '--conv_impl', 'auto,matmul', '--steps', '20',
                       '--warmup', '3'],
              accuracy=[])


# For the stages that compare runs bit for bit: XLA's deterministic GPU
# kernels (no effect on a CPU).
DETERMINISTIC = '--xla_gpu_deterministic_ops=true'


class ChecksFailed(RuntimeError):
  """A stage ran but some of its checks failed; its figures are kept."""

  def __init__(self, failed, figures, commands):
    super().__init__(f'failed checks: {", ".join(failed)}')
    self.figures, self.commands = figures, commands


def deterministic_env():
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} {DETERMINISTIC}'.strip()
  return env


def main_command(config, workdir, *extra):
  return [sys.executable, '-m', 'resnet_jax.main',
          f'--config={ROOT}/configs/{config}', f'--workdir={workdir}', *extra]


def run(command, deadline, env=None):
  """Runs a stage's child until the stage's deadline; returns its stdout
  (raises on failure)."""
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(1.0, deadline - time.time()), env=env)
  if result.returncode != 0:
    # The error line (stderr) and a summary such as pytest's (stdout).
    tail = [*result.stderr.strip().splitlines()[-3:],
            *result.stdout.strip().splitlines()[-1:]]
    raise RuntimeError(f'exit {result.returncode}: {" / ".join(tail)}')
  return result.stdout


def smoke(args, s, scratch, deadline):
  run_flags = [*s['data'], f'--config.train.steps={s["steps"]}',
            f'--config.train.eval_every={s["eval_every"]}',
            f'--config.train.warmup_steps={s["warmup"]}']
  figures, commands = {}, {}
  env = deterministic_env()
  for dtype in ('float32',):
    workdir = os.path.join(scratch, f'smoke_{dtype}')
    train = main_command('resnet_conv.py', workdir, *run_flags,
                         f'--config.train.dtype={dtype}')
    start = time.perf_counter()
    run(train, deadline, env)
    history = reporting.read_history(workdir)
    final = [r for r in history if 'val_accuracy' in r][-1]
    rates = [r['images_per_sec'] for r in history if r.get('images_per_sec')]
    figures[dtype] = {'val_accuracy': final['val_accuracy'],
                      'val_loss': final['val_loss'],
                      'seconds': time.perf_counter() - start,
                      'images_per_sec_last': rates[-1] if rates else None}
    commands[dtype] = shlex.join(train)
  # --mode=evaluate on the restored float32 checkpoint reproduces the run's
  # last validation figures.
  evaluate = main_command('resnet_conv.py', os.path.join(scratch,
                                                         'smoke_float32'),
                          *run_flags, '--mode=evaluate', '--split=val',
                          '--checkpoint=latest')
  result = last_json(run(evaluate, deadline, env))
  figures['evaluate'] = {'val_accuracy': result['accuracy'],
                         'val_loss': result['loss']}
  commands['evaluate'] = shlex.join(evaluate)
  # Kill and resume: SIGKILL (no chance to save) once the first checkpoint is
  # on disk, rerun the same command, compare with the uninterrupted run.
  workdir = os.path.join(scratch, 'smoke_killed')
  train = main_command('resnet_conv.py', workdir, *run_flags,
                       '--config.train.dtype=float32')
  child = subprocess.Popen(train, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  first = os.path.join(workdir, 'checkpoints', str(s['eval_every']))
  while (not os.path.isdir(first) and child.poll() is None
         and time.time() < deadline):
    time.sleep(0.05)
  # Read now: retention removes this checkpoint once the resumed run saves
  # a later one.
  checkpoint_before_kill = os.path.isdir(first)
  killed_mid_run = child.poll() is None
  child.kill()  # SIGKILL
  child.wait()
  run(train, deadline, env)
  resumed = [r for r in reporting.read_history(workdir)
             if 'val_accuracy' in r][-1]
  figures['kill_resume'] = {
      'killed_mid_run': killed_mid_run,
      'checkpoint_before_kill': checkpoint_before_kill,
      'val_accuracy': resumed['val_accuracy'], 'val_loss': resumed['val_loss'],
      'equals_uninterrupted': all(resumed[k] == figures['float32'][k]
                                  for k in ('val_accuracy', 'val_loss'))}
  commands['kill_resume'] = [shlex.join(train) + '  # SIGKILL, then again']
  commands['XLA_FLAGS'] = env['XLA_FLAGS']
  kill = figures['kill_resume']
  evaluated, trained = figures['evaluate'], figures['float32']
  checks = {
      # As tests/test_train.py's: the same program on the same checkpoint.
      'evaluate_reproduces': (
          abs(evaluated['val_accuracy'] - trained['val_accuracy']) <= 1e-6
          and abs(evaluated['val_loss'] - trained['val_loss'])
          <= 1e-5 * abs(trained['val_loss'])),
      # A run that ended before the kill, or was killed before its first
      # checkpoint, proves nothing about resuming.
      'killed_mid_run': kill['killed_mid_run'],
      'checkpoint_before_kill': kill['checkpoint_before_kill'],
      'equals_uninterrupted': kill['equals_uninterrupted']}
  if failed := [name for name, held in checks.items() if not held]:
    raise ChecksFailed(failed, figures, commands)
  return figures, commands


def tests(args, s, scratch, deadline):
  # -n 0: one process; xdist's workers would each preallocate GPU memory.
  command = [sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p',
             'no:cacheprovider', *TESTS]
  # A failing test fails the stage: run() raises with pytest's last lines.
  env = deterministic_env()
  out = run(command, deadline, env)
  return {'summary': out.strip().splitlines()[-1]}, {
      'tests': shlex.join(command), 'XLA_FLAGS': env['XLA_FLAGS']}


class PartialRows(RuntimeError):
  """A benchmark stopped midway; `rows` are those it had written."""

  def __init__(self, error, rows):
    super().__init__(f'{error}; {len(rows)} rows written before it')
    self.rows = rows


def rows_of(script, name, extra, scratch, deadline):
  """Runs a benchmark that writes its JSON row by row; its rows and command.
  A failure or timeout still returns the rows written (PartialRows)."""
  path = os.path.join(scratch, f'{name}.json')
  command = [sys.executable, os.path.join(BENCH, script), *extra,
             f'--json={path}']
  read_rows = lambda: json.load(open(path))['rows'] if os.path.exists(path) else []  # pylint: disable=consider-using-with
  try:
    run(command, deadline)
  except (RuntimeError, subprocess.TimeoutExpired) as e:
    raise PartialRows(f'{type(e).__name__}: {e}', read_rows()) from None
  return {'rows': read_rows()}, {name: shlex.join(command)}


def throughput(args, s, scratch, deadline):
  return rows_of('gpu_throughput.py', 'throughput', s['throughput'], scratch,
                 deadline)


def members(args, s, scratch, deadline):
  return rows_of('members.py', 'members', s['members'], scratch, deadline)


def time_to_accuracy(config, name, args, s, scratch, deadline):
  command = [sys.executable, os.path.join(BENCH, 'time_to_accuracy.py'),
             f'--target={s["target"]}',
             f'--workdir={os.path.join(scratch, name)}', '--',
             f'--config={ROOT}/configs/{config}', *s['data'], *s['accuracy']]
  return last_json(run(command, deadline)), {name: shlex.join(command)}


def accuracy(args, s, scratch, deadline):
  return time_to_accuracy('resnet_conv_fast.py', 'accuracy', args, s, scratch,
                          deadline)


def accuracy_gpu(args, s, scratch, deadline):
  return time_to_accuracy('resnet_conv_gpu.py', 'accuracy_gpu', args, s,
                          scratch, deadline)


# Time limits in seconds: 6 minutes in all.
STAGES = {'smoke': (smoke, 95), 'tests': (tests, 40),
          'throughput': (throughput, 70), 'members': (members, 60),
          'accuracy': (accuracy, 60), 'accuracy_gpu': (accuracy_gpu, 35)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--data', help='a cifar-10-batches-bin folder')
  p.add_argument('--tiny', action='store_true',
                 help='synthetic data and a tiny model: a rehearsal anywhere')
  p.add_argument('--stages', default=','.join(STAGES),
                 help=f'comma-separated, of {",".join(STAGES)}')
  p.add_argument('--out', default=os.path.join(BENCH, 'results',
                                               'gpu_check.json'))
  p.add_argument('--time-scale', type=float, default=1.0,
                 help="multiplies each stage's time limit (a slow CPU)")
  p.add_argument('--dry-run', action='store_true',
                 help='print the plan and exit')
  args = p.parse_args()
  stages = common.names(args.stages)
  if unknown := set(stages) - set(STAGES):
    p.error(f'unknown stages: {",".join(sorted(unknown))}')
  if not args.tiny and not (args.data and os.path.isdir(args.data)):
    p.error('--data=DIR (a cifar-10-batches-bin folder) or --tiny')
  if args.dry_run:
    for name in stages:
      print(f'{name}: up to {STAGES[name][1]} s')
    print(f'writes {args.out}')
    return
  report = {'command': shlex.join([sys.executable, *sys.argv]),
            # Read in a child: this process holds no GPU memory.
            'environment': common.environment_in_child(), 'stages': {}}
  with tempfile.TemporaryDirectory(prefix='gpu_check-') as scratch:
    for name in stages:
      fn, limit = STAGES[name]
      start = time.perf_counter()
      try:
        figures, commands = fn(args, stage_args(args), scratch,
                               time.time() + limit * args.time_scale)
        entry = {'ok': True, 'figures': figures, 'commands': commands}
      except (RuntimeError, subprocess.TimeoutExpired, OSError,
              ValueError) as e:
        entry = {'ok': False, 'error': f'{type(e).__name__}: {e}'}
        if isinstance(e, PartialRows):
          entry['figures'] = {'rows': e.rows}
        if isinstance(e, ChecksFailed):
          entry.update(figures=e.figures, commands=e.commands)
      entry['seconds'] = round(time.perf_counter() - start, 1)
      report['stages'][name] = entry
      print(f'{name}: {"ok" if entry["ok"] else entry["error"]} '
            f'({entry["seconds"]} s)', flush=True)
      common.write_json(args.out, report)  # Each stage kept as it ends.
  print(f'wrote {args.out}')
  sys.exit(0 if all(e['ok'] for e in report['stages'].values()) else 1)


if __name__ == '__main__':
  main()
