"""bench/gpu_check.py, rehearsed on the CPU: its plan, and one tiny stage
writing the JSON it would write on a GPU (the whole --tiny run takes minutes
here; bench/README.md)."""
import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

CHECK = os.path.join(REPO, 'bench', 'gpu_check.py')


def run_check(*args):
  return subprocess.run([sys.executable, CHECK, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=1800)


def test_dry_run_lists_every_stage_within_six_minutes():
  result = run_check('--tiny', '--dry-run')
  assert result.returncode == 0, result.stderr
  limits = {line.split(':')[0]: int(line.split('up to ')[1].split()[0])
            for line in result.stdout.splitlines() if 'up to' in line}
  assert list(limits) == ['smoke', 'tests', 'throughput', 'members',
                          'accuracy', 'accuracy_gpu']
  assert sum(limits.values()) <= 6 * 60
  refused = run_check('--stages=smoke,fast')
  assert refused.returncode == 2 and 'unknown stages: fast' in refused.stderr


@pytest.mark.slow
def test_tiny_speed_stages_write_figures_with_their_command(tmp_path):
  out = tmp_path / 'check.json'
  # A generous time scale: this CPU may be shared with other jobs.
  result = run_check('--tiny', '--stages=throughput,members', '--time-scale=10',
                     f'--out={out}')
  assert result.returncode == 0, result.stdout + result.stderr
  report = json.loads(out.read_text())
  assert report['environment']['jax'] and report['environment']['device']
  stage = report['stages']['throughput']
  assert stage['ok'] and 'gpu_throughput.py' in stage['commands']['throughput']
  (row,) = stage['figures']['rows']
  assert row['model'] == 'resnet8' and row['batch'] == 16
  assert row['jax_images_per_sec'] > 0 and row['jax_compile_s'] > 0
  assert (row['members'], row['conv_impl']) == (1, 'auto')
  stage = report['stages']['members']
  assert stage['ok'] and '--members 1,2' in stage['commands']['members']
  # Both formulations of members: grouped convolutions (auto) and batched
  # matrix products (matmul); the one-member-per-call chunk once.
  rows = stage['figures']['rows']
  assert [(row['members'], row['member_chunk'], row['conv_impl'])
          for row in rows] == [(1, 0, 'auto'), (2, 0, 'auto'), (2, 1, 'auto'),
                               (1, 0, 'matmul'), (2, 0, 'matmul')]
  assert all(row['jax_images_per_sec'] > 0 and row['step_ms'] > 0
             and row['torch_images_per_sec'] is None for row in rows)


def import_check():
  sys.path.insert(0, os.path.join(REPO, 'bench'))
  import gpu_check  # pylint: disable=import-outside-toplevel
  return gpu_check


@pytest.mark.parametrize('fails', [False, True])
def test_a_failing_test_fails_the_tests_stage_and_the_check(
    tmp_path, monkeypatch, fails):
  gpu_check = import_check()
  injected = tmp_path / 'test_injected.py'
  injected.write_text('def test_holds():\n  pass\n\n\n'
                      f'def test_may_fail():\n  assert not {fails}\n')
  monkeypatch.setattr(gpu_check, 'TESTS', (str(injected),))
  out = tmp_path / 'check.json'
  monkeypatch.setattr(sys, 'argv', ['gpu_check.py', '--tiny', '--stages=tests',
                                    f'--out={out}'])
  with pytest.raises(SystemExit) as exited:
    gpu_check.main()
  stage = json.loads(out.read_text())['stages']['tests']
  if fails:
    assert exited.value.code == 1 and not stage['ok']
    assert '1 failed, 1 passed' in stage['error'], stage
  else:
    assert exited.value.code == 0 and stage['ok']
    assert '2 passed' in stage['figures']['summary'], stage


@pytest.mark.slow
def test_a_resume_that_differs_fails_the_smoke_stage(tmp_path, monkeypatch):
  """The killed run resumes with another seed: of the smoke's checks, that
  its validation equals the uninterrupted run's alone fails (the others
  hold, on a CPU as on a GPU), and its figures are kept."""
  gpu_check = import_check()
  command = gpu_check.main_command

  def reseeded(config, workdir, *extra):
    if workdir.endswith('smoke_killed'):
      extra = (*extra, '--config.seed=7')
    return command(config, workdir, *extra)

  monkeypatch.setattr(gpu_check, 'main_command', reseeded)
  args = argparse.Namespace(tiny=True)
  with pytest.raises(gpu_check.StageFailed,
                     match='failed checks: equals_uninterrupted$') as failed:
    gpu_check.smoke(gpu_check.stage_args(args), str(tmp_path),
                    time.time() + 600)
  kill = failed.value.entry['figures']['kill_resume']
  assert kill['killed_mid_run'] and kill['checkpoint_before_kill']
  assert not kill['equals_uninterrupted']


def test_a_benchmark_out_of_time_keeps_the_rows_it_wrote(tmp_path):
  gpu_check = import_check()
  # A benchmark that writes one row, then hangs past the stage's limit.
  script = tmp_path / 'hangs.py'
  script.write_text('import json, sys, time\n'
                    'path = sys.argv[-1].split("=", 1)[1]\n'
                    'json.dump({"rows": [{"images_per_sec": 1.0}]}, '
                    'open(path, "w"))\n'
                    'time.sleep(60)\n')
  with pytest.raises(gpu_check.StageFailed) as stopped:
    gpu_check.rows_of('hangs', {'hangs': []}, str(tmp_path), time.time() + 3,
                      script=str(script))
  assert stopped.value.entry['figures']['rows'] == [{'images_per_sec': 1.0}]
  assert 'TimeoutExpired' in str(stopped.value)


@pytest.mark.slow
def test_time_to_a_target_reached_and_one_never_reached(tmp_path):
  """The accuracy stage on a tiny run: the first evaluation at the target,
  with its time from the process start; a target never reached fails the
  stage, keeping the run's wall time."""
  gpu_check = import_check()
  s = gpu_check.stage_args(argparse.Namespace(tiny=True))
  figures, commands = gpu_check.time_to_accuracy(
      'resnet_conv.py', 'reached', s, str(tmp_path), time.time() + 600)
  assert figures['reached'] and figures['step'] == 4  # The first evaluation.
  assert figures['seconds_from_start'] > 0 and figures['val_accuracy'] >= 0
  assert 'resnet_jax.main' in commands['reached']
  with pytest.raises(gpu_check.StageFailed, match='1.01 not reached') as never:
    gpu_check.time_to_accuracy('resnet_conv.py', 'never', {**s, 'target': 1.01},
                               str(tmp_path), time.time() + 600)
  figures = never.value.entry['figures']
  assert not figures['reached'] and figures['exit_code'] == 0
  assert figures['wall_time_s'] > 0


def test_a_run_that_fails_fails_the_accuracy_stage_with_its_error(tmp_path):
  gpu_check = import_check()
  s = gpu_check.stage_args(argparse.Namespace(tiny=True))
  s['accuracy'] = ['--config.train.no_such_key=1']
  with pytest.raises(gpu_check.StageFailed, match='not reached') as failed:
    gpu_check.time_to_accuracy('resnet_conv.py', 'fails', s, str(tmp_path),
                               time.time() + 600)
  assert failed.value.entry['figures']['exit_code'] not in (0, None)
  assert 'no_such_key' in str(failed.value), failed.value


def full_length(tmp_path, monkeypatch, models, seconds):
  """The full_length stage, --tiny, on `models` for `seconds` of training."""
  gpu_check = import_check()
  monkeypatch.setattr(gpu_check, 'FULL_LENGTH', {
      name: gpu_check.FULL_LENGTH[name] for name in models})
  s = gpu_check.stage_args(argparse.Namespace(tiny=True,
                                              workdir=str(tmp_path)))
  return gpu_check, lambda: gpu_check.full_length(
      'full_length', s, None, time.time() + seconds)


@pytest.mark.slow
def test_full_length_runs_side_by_side_each_evaluated_both_ways(
    tmp_path, monkeypatch):
  # Two of the three (CI's time): side by side, as on a GPU.
  _, stage = full_length(tmp_path, monkeypatch, ['resnet20_conv', 'cnn20'], 600)
  figures, _ = stage()
  assert list(figures['runs']) == ['resnet20_conv', 'cnn20']
  for name, run in figures['runs'].items():
    workdir = tmp_path / 'full_length' / name
    assert run['finished'] and run['exit_code'] == 0 and run['last_step'] == 8
    assert f'--workdir={workdir}' in run['command']
    # The evaluation of the last checkpoint, single view, is the run's own
    # last validation (these configs validate single view).
    history = [json.loads(line) for line in
               (workdir / 'metrics.jsonl').read_text().splitlines()]
    last = [r for r in history if 'val_accuracy' in r][-1]
    assert last['step'] == 8
    assert run['single_view']['accuracy'] == last['val_accuracy']
    assert run['last_val_accuracy'] == last['val_accuracy']
    for view, flip in (('single_view', False), ('flip_tta', True)):
      entry = run[view]
      assert 0 <= entry['accuracy'] <= 1 and entry['step'] == 8
      assert entry['examples'] == 32  # 20% of 160 synthetic images.
      assert f'--config.train.eval_flip={flip}' in entry['command']
    assert (workdir / 'checkpoints' / '8').is_dir()


@pytest.mark.slow
def test_full_length_runs_past_the_limit_are_stopped_and_resumed(
    tmp_path, monkeypatch):
  gpu_check, stage = full_length(tmp_path, monkeypatch, ['resnet20_conv'], 0.5)
  # Half a second: the run is stopped (SIGTERM) before its first step, and
  # not evaluated.
  with pytest.raises(gpu_check.StageFailed, match='unfinished .*: '
                     'resnet20_conv$') as stopped:
    stage()
  (run,) = stopped.value.entry['figures']['runs'].values()
  assert not run['finished'] and run['exit_code'] != 0
  assert run['last_step'] == 0 and run['last_val_accuracy'] is None
  assert 'single_view' not in run
  # The same command, with time: the run resumes in its workdir and ends.
  gpu_check, stage = full_length(tmp_path, monkeypatch, ['resnet20_conv'], 600)
  (run,) = stage()[0]['runs'].values()
  assert run['finished'] and run['last_step'] == 8
  assert 'accuracy' in run['flip_tta']


def test_full_length_stages_need_a_workdir_and_run_only_when_named():
  refused = run_check('--tiny', '--stages=full_length', '--dry-run')
  assert refused.returncode == 2 and '--workdir=DIR' in refused.stderr
  plan = run_check('--tiny', '--stages=full_length_gpu', '--workdir=w',
                   '--dry-run')
  assert plan.returncode == 0 and 'full_length_gpu: up to 450 s' in plan.stdout


def test_tests_on_an_accelerator_compile_as_a_run_does(tmp_path):
  """conftest's -O0 (FAST_COMPILE) is for XLA:CPU: with a PJRT plugin
  installed (here a fake one under jax_plugins) the tests, as the tests
  stage runs them on a GPU, keep XLA's defaults unless JAX_PLATFORMS=cpu."""
  from conftest import FAST_COMPILE  # pylint: disable=import-outside-toplevel
  assert FAST_COMPILE in os.environ['XLA_FLAGS']  # This CPU-only machine.
  (tmp_path / 'jax_plugins' / 'xla_fake').mkdir(parents=True)
  (tmp_path / 'jax_plugins' / 'xla_fake' / '__init__.py').write_text('')
  probe = ('import sys; sys.path.insert(0, "tests"); import conftest; '
           'print(conftest.accelerator_installed(), '
           'conftest.fast_compile_applies())')
  for platforms, expected in ((None, 'True False'), ('cpu', 'True True'),
                              ('cuda', 'True False')):
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    env.pop('JAX_PLATFORMS', None)
    env.update({'JAX_PLATFORMS': platforms} if platforms else {})
    result = subprocess.run([sys.executable, '-c', probe], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    assert result.stdout.split('\n')[-2] == expected, (platforms, result)
