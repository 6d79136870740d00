"""The GPU check: smoke-tests training on this machine's accelerator and
measures it, writing every figure, with the command that gave it, to one JSON
(commands: bench/README.md; the stages: docs/gpus_and_clusters.md). The
full_length stages, run only when named, train the original table's models
at their whole budget, resuming across calls.

The stage limits (STAGES) come from an H200's figures: ~30 s to a run's
first step before the compilation cache, 210 s for gpu_throughput.py's 8
default rows, 96.5 s for the batch-128 30-epoch run; later stages find most
programs in the cache.
"""
import argparse
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

import common
from common import BENCH, ROOT, last_json
from resnet_jax import reporting
from resnet_jax.workdir import read_jsonl

TESTS = ('tests/test_models.py',
         'tests/test_train.py::test_training_learns_and_writes_its_workdir',
         'tests/test_train.py::test_resume_matches_an_uninterrupted_run',
         'tests/test_train.py::test_bfloat16_run_learns_with_float32_state',
         'tests/test_train.py::'
         'test_evaluate_restored_checkpoint_reproduces_validation_metrics')
# --tiny's data and model: synthetic images, a tiny ResNet.
TINY_DATA = ['--config.data.source=synthetic', '--config.data.image_size=16',
             '--config.data.synthetic_examples=160',
             '--config.data.val_fraction=0.2', '--config.model.num_layers=1',
             '--config.train.batch_size=16',
             '--config.train.eval_batch_size=20']
# The members stage's grid (gpu_throughput.py): 1 and N members, all vmapped
# (grouped convolutions), one per call, and all vmapped as batched matrix
# products (model.conv_impl=matmul); no PyTorch, which trains one member.
MEMBERS = ['--member_chunk', '0,1', '--conv_impl', 'auto,matmul', '--no-torch']
# For the stages that compare runs bit for bit: XLA's deterministic GPU
# kernels (no effect on a CPU); otherwise atomic accumulations make a resumed
# run differ from its twin in the last bits.
DETERMINISTIC = '--xla_gpu_deterministic_ops=true'
# The full_length stages: the original table's models, by config.
FULL_LENGTH = {'resnet20_zeropad': 'resnet_zeropad.py',
               'resnet20_conv': 'resnet_conv.py', 'cnn20': 'cnn.py'}
# full_length_gpu: 64,000 x 128 images at batch 512; base_config's warmup
# (1,000 steps) and evaluations (every 1,000) kept in images; the scaling of
# config.gpu_recipe.
GPU_RECIPE = ['--config.train.batch_size=512', '--config.train.steps=16000',
              '--config.train.learning_rate=0.4',
              '--config.train.warmup_steps=250',
              '--config.train.eval_every=250', '--config.train.dtype=bfloat16']


def stage_args(args):
  """Per-stage settings: the real ones, or --tiny's (synthetic, seconds)."""
  if args.tiny:
    speed = ['--models', 'resnet8', '--batch-sizes', '16', '--dtypes',
             'float32', '--steps', '2', '--warmup', '1', '--examples', '128']
    eight = ['--config.train.steps=8', '--config.train.eval_every=4',
             '--config.train.warmup_steps=2']
    return dict(data=TINY_DATA, steps=8, eval_every=4, warmup=2, target=0.0,
                throughput=speed,
                members=[*speed, '--members', '1,2', *MEMBERS],
                accuracy=eight, full_length=eight, full_length_gpu=eight,
                workdir=getattr(args, 'workdir', None))
  return dict(data=['--config.data.source=cifar10_binary',
                    f'--config.data.dir={os.path.abspath(args.data)}'],
              steps=600, eval_every=200, warmup=100, target=0.9125,
              throughput=['--models', 'resnet20', '--batch-sizes', '128,512',
                          '--dtypes', 'float32,bfloat16', '--steps', '30',
                          '--warmup', '3'],
              members=['--models', 'resnet20', '--batch-sizes', '128',
                       '--dtypes', 'float32', '--steps', '20', '--warmup', '3',
                       '--members', '1,8', *MEMBERS],
              accuracy=[], full_length=[], full_length_gpu=GPU_RECIPE,
              workdir=args.workdir)


class StageFailed(RuntimeError):
  """A stage's child or one of its checks failed; `entry` keeps what it
  measured (figures, commands)."""

  def __init__(self, error, **entry):
    super().__init__(error)
    self.entry = entry


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


def stop(child):
  """SIGTERM (a run saves its step, then exits), SIGKILL a minute later."""
  child.send_signal(signal.SIGTERM)
  try:
    child.wait(60)
  except subprocess.TimeoutExpired:
    child.kill()
    child.wait()


def last_validation(workdir):
  return [r for r in reporting.read_history(workdir) if 'val_accuracy' in r][-1]


def smoke(s, scratch, deadline):
  """Train float32, evaluate its checkpoint, and kill and resume a twin."""
  run_flags = [*s['data'], f'--config.train.steps={s["steps"]}',
               f'--config.train.eval_every={s["eval_every"]}',
               f'--config.train.warmup_steps={s["warmup"]}',
               '--config.train.dtype=float32']
  env = deterministic_env()
  workdir = os.path.join(scratch, 'smoke_float32')
  train = main_command('resnet_conv.py', workdir, *run_flags)
  start = time.perf_counter()
  run(train, deadline, env)
  final = last_validation(workdir)
  rates = [r['images_per_sec'] for r in reporting.read_history(workdir)
           if r.get('images_per_sec')]
  trained = {'val_accuracy': final['val_accuracy'],
             'val_loss': final['val_loss'],
             'seconds': time.perf_counter() - start,
             'images_per_sec_last': rates[-1] if rates else None}
  # --mode=evaluate on the restored checkpoint reproduces the run's last
  # validation figures.
  evaluate = main_command('resnet_conv.py', workdir, *run_flags,
                          '--mode=evaluate', '--split=val',
                          '--checkpoint=latest')
  result = last_json(run(evaluate, deadline, env))
  evaluated = {'val_accuracy': result['accuracy'], 'val_loss': result['loss']}
  # Kill and resume: SIGKILL (no chance to save) once the first checkpoint is
  # on disk, rerun the same command, compare with the uninterrupted run.
  workdir = os.path.join(scratch, 'smoke_killed')
  killed = main_command('resnet_conv.py', workdir, *run_flags)
  child = subprocess.Popen(killed, cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL,
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
  run(killed, deadline, env)
  resumed = last_validation(workdir)
  kill = {'killed_mid_run': killed_mid_run,
          'checkpoint_before_kill': checkpoint_before_kill,
          'val_accuracy': resumed['val_accuracy'],
          'val_loss': resumed['val_loss'],
          'equals_uninterrupted': all(resumed[k] == trained[k]
                                      for k in ('val_accuracy', 'val_loss'))}
  figures = {'float32': trained, 'evaluate': evaluated, 'kill_resume': kill}
  commands = {'float32': shlex.join(train), 'evaluate': shlex.join(evaluate),
              'kill_resume': [shlex.join(killed) + '  # SIGKILL, then again'],
              'XLA_FLAGS': env['XLA_FLAGS']}
  checks = {
      # As tests/test_train.py's: the same program on the same checkpoint.
      'evaluate_reproduces': (
          abs(evaluated['val_accuracy'] - trained['val_accuracy']) <= 1e-6
          and abs(evaluated['val_loss'] - trained['val_loss'])
          <= 1e-5 * abs(trained['val_loss'])),
      # A run that ended before the kill, or was killed before its first
      # checkpoint, proves nothing about resuming.
      'killed_mid_run': killed_mid_run,
      'checkpoint_before_kill': checkpoint_before_kill,
      'equals_uninterrupted': kill['equals_uninterrupted']}
  if failed := [name for name, held in checks.items() if not held]:
    raise StageFailed(f'failed checks: {", ".join(failed)}', figures=figures,
                      commands=commands)
  return figures, commands


def tests(s, scratch, deadline):
  # -n 0: one process; xdist's workers would each preallocate GPU memory.
  command = [sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p',
             'no:cacheprovider', *TESTS]
  env = deterministic_env()
  # A failing test fails the stage: run() raises with pytest's last lines.
  out = run(command, deadline, env)
  return {'summary': out.strip().splitlines()[-1]}, {
      'tests': shlex.join(command), 'XLA_FLAGS': env['XLA_FLAGS']}


def rows_of(name, s, scratch, deadline,
            script=os.path.join(BENCH, 'gpu_throughput.py')):
  """Runs a benchmark that writes its JSON row by row, with s[name] as its
  arguments; its rows and command. A failure or timeout keeps the rows
  written before it."""
  path = os.path.join(scratch, f'{name}.json')
  command = [sys.executable, script, *s[name], f'--json={path}']
  read_rows = lambda: json.load(open(path))['rows'] if os.path.exists(path) else []  # pylint: disable=consider-using-with
  try:
    run(command, deadline)
  except (RuntimeError, subprocess.TimeoutExpired) as e:
    rows = read_rows()
    raise StageFailed(f'{type(e).__name__}: {e}; {len(rows)} rows written '
                      'before it', figures={'rows': rows}) from None
  return {'rows': read_rows()}, {name: shlex.join(command)}


def time_to_accuracy(config, name, s, scratch, deadline):
  """Seconds from starting a run (imports, data and compilation count) to
  its first evaluation at s['target'] validation accuracy, read from its
  metrics.jsonl as it comes; then SIGTERM stops the run (it saves first)."""
  workdir = os.path.join(scratch, name)
  command = main_command(config, workdir, *s['data'], *s['accuracy'])
  metrics, commands = os.path.join(workdir, 'metrics.jsonl'), {
      name: shlex.join(command)}
  log = os.path.join(scratch, f'{name}.stderr')
  start = time.perf_counter()
  with open(log, 'w') as stderr:
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=stderr)
  while True:
    done = child.poll() is not None  # Before reading: its last records count.
    records = read_jsonl(metrics)[0] if os.path.exists(metrics) else []
    seconds = round(time.perf_counter() - start, 1)
    reached = next((r for r in records
                    if r.get('val_accuracy', 0) >= s['target']), None)
    if reached or done or time.time() > deadline:
      break
    time.sleep(0.05)
  stop(child)
  figures = {'target': s['target'], 'reached': bool(reached)}
  if not reached:
    with open(log) as f:
      lines = f.read().strip().splitlines()
    why = f': {lines[-1]}' if child.returncode and lines else ''  # Its error.
    raise StageFailed(f'{s["target"]} not reached in {seconds} s (exit '
                      f'{child.returncode}{why})',
                      figures={**figures, 'wall_time_s': seconds,
                               'exit_code': child.returncode},
                      commands=commands)
  return {**figures, 'seconds_from_start': seconds, 'step': reached['step'],
          'epoch': round(reached['epoch'], 2),
          'val_accuracy': reached['val_accuracy'], 'workdir': workdir}, commands


def full_length(recipe, s, scratch, deadline):
  """FULL_LENGTH's runs side by side on one accelerator, in the folder
  `recipe` of s['workdir'], stopped at the deadline (SIGTERM: each saves, and
  the same command resumes it); then each finished run's last checkpoint
  evaluated on the validation split, single view and with flip."""
  del scratch  # The runs outlive this check, to be resumed and kept.
  # Each may take a third of the memory (JAX preallocates 75% otherwise).
  env = {'XLA_PYTHON_CLIENT_MEM_FRACTION': '.3', **os.environ}
  runs, running, commands = {}, {}, {}
  base = os.path.join(s['workdir'], recipe)
  os.makedirs(base, exist_ok=True)
  for name, config in FULL_LENGTH.items():
    workdir = os.path.join(base, name)
    commands[name] = command = main_command(config, workdir, *s['data'],
                                            *s[recipe])
    with open(os.path.join(base, f'{name}.log'), 'a') as log:
      running[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
    runs[name] = {'command': shlex.join(command)}
  start = time.perf_counter()
  while running:
    for name, child in list(running.items()):
      if time.time() > deadline:
        stop(child)
      if child.poll() is None:
        continue
      del running[name]
      workdir = os.path.join(base, name)
      history = (reporting.read_history(workdir) if os.path.exists(
          os.path.join(workdir, 'metrics.jsonl')) else [])  # Killed early.
      validations = [r for r in history if 'val_accuracy' in r]
      runs[name].update(
          exit_code=child.returncode, finished=child.returncode == 0,
          seconds=round(time.perf_counter() - start, 1),
          last_step=max((r['step'] for r in history if 'step' in r), default=0),
          # The run's own last validation, single view as these configs
          # evaluate: single_view below must reproduce it.
          last_val_accuracy=validations[-1]['val_accuracy'] if validations
          else None)
    time.sleep(0.2)
  for name, entry in runs.items():
    if not entry['finished']:
      continue
    for view, flip in (('single_view', False), ('flip_tta', True)):
      command = commands[name] + [
          '--mode=evaluate', '--split=val', '--checkpoint=latest',
          f'--config.train.eval_flip={flip}']
      entry[view] = {'command': shlex.join(command)}
      try:  # Minutes of its own: the stage's limit is the training's.
        out = last_json(run(command, time.time() + 300))
        entry[view].update(accuracy=out['accuracy'], loss=out['loss'],
                           step=out['step'], examples=out['num_examples'])
      except (RuntimeError, subprocess.TimeoutExpired) as e:
        entry[view]['error'] = str(e)
  if unfinished := [n for n, r in runs.items() if not r['finished']]:
    raise StageFailed(f'unfinished (the same command resumes them): '
                      f'{", ".join(unfinished)}', figures={'runs': runs})
  if failed := [n for n, r in runs.items() if 'error' in r['single_view']
                or 'error' in r['flip_tta']]:
    raise StageFailed(f'evaluation failed: {", ".join(failed)}',
                      figures={'runs': runs})
  return {'runs': runs}, {}


# (the stage's function, its time limit in seconds): 6 minutes in all.
STAGES = {
    'smoke': (smoke, 95), 'tests': (tests, 40),
    'throughput': (functools.partial(rows_of, 'throughput'), 70),
    'members': (functools.partial(rows_of, 'members'), 60),
    'accuracy': (functools.partial(time_to_accuracy, 'resnet_conv_fast.py',
                                   'accuracy'), 60),
    'accuracy_gpu': (functools.partial(time_to_accuracy, 'resnet_conv_gpu.py',
                                       'accuracy_gpu'), 35)}
DEFAULT_STAGES = list(STAGES)  # full_length: many calls' training.
STAGES.update({
    'full_length': (functools.partial(full_length, 'full_length'), 450),
    'full_length_gpu': (functools.partial(full_length, 'full_length_gpu'),
                        450)})


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--data', help='a cifar-10-batches-bin folder')
  p.add_argument('--tiny', action='store_true',
                 help='synthetic data and a tiny model: a rehearsal anywhere')
  p.add_argument('--stages', default=','.join(DEFAULT_STAGES),
                 help=f'comma-separated, of {",".join(STAGES)}')
  p.add_argument('--workdir', help="the full_length stages' runs, resumed "
                 'by the same command')
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
  if not args.workdir and any(n.startswith('full_length') for n in stages):
    p.error('the full_length stages need --workdir=DIR')
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
        figures, commands = fn(stage_args(args), scratch,
                               time.time() + limit * args.time_scale)
        entry = {'ok': True, 'figures': figures, 'commands': commands}
      except (RuntimeError, subprocess.TimeoutExpired, OSError,
              ValueError) as e:
        entry = {'ok': False, 'error': f'{type(e).__name__}: {e}',
                 **getattr(e, 'entry', {})}
      entry['seconds'] = round(time.perf_counter() - start, 1)
      report['stages'][name] = entry
      print(f'{name}: {"ok" if entry["ok"] else entry["error"]} '
            f'({entry["seconds"]} s)', flush=True)
      common.write_json(args.out, report)  # Each stage kept as it ends.
  print(f'wrote {args.out}')
  sys.exit(0 if all(e['ok'] for e in report['stages'].values()) else 1)


if __name__ == '__main__':
  main()
