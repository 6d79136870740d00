"""launch/: --help, --dry-run output, bad options, the real exec path (with a
fake interpreter and srun) and shellcheck. No JAX runs; the file takes ~1 s."""
import json
import os
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'launch')
SCRIPTS = ('train_gpu.sh', 'train_all_gpus.sh', 'train_slurm.sbatch',
           'evaluate.sh')
# Launchers with options of their own (no --config/--workdir), tested in their
# own files: only shellcheck and the executable bit here.
OTHER_SCRIPTS = ('depth_sweep.sh',)  # tests/test_compare.py
CONFIG = 'configs/resnet_conv.py'
# Variables the launchers read: scrubbed so the host's settings (a SLURM job,
# a CUDA_VISIBLE_DEVICES, XLA_FLAGS) cannot change what the tests see.
SCRUB = ('CUDA_VISIBLE_DEVICES', 'XLA_PYTHON_CLIENT_MEM_FRACTION',
         'XLA_CLIENT_MEM_FRACTION',
         'XLA_PYTHON_CLIENT_PREALLOCATE', 'XLA_PYTHON_CLIENT_ALLOCATOR',
         'TF_CPP_MIN_LOG_LEVEL', 'XLA_FLAGS', 'JAX_LOCAL_DEVICE_IDS', 'DRY_RUN',
         'PYTHON', 'GPUS_PER_NODE')


def launch(script, *args, env=None):
  """Runs launch/SCRIPT (the sbatch file through bash, as a user previews it)."""
  base = {k: v for k, v in os.environ.items()
          if k not in SCRUB and not k.startswith('SLURM_')}
  cmd = [os.path.join(LAUNCH, script), *args]
  if script.endswith('.sbatch'):
    cmd.insert(0, 'bash')
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                        timeout=30, env={**base, **(env or {})})


def dry_run(script, *args, env=None):
  result = launch(script, '--dry-run', *args, env=env)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  exports = dict(line[len('export '):].split('=', 1) for line in lines[:-1])
  assert all(line.startswith('export ') for line in lines[:-1]), lines
  return exports, lines[-1]


def assert_one_line_error(result, *patterns):
  assert result.returncode == 2, result.stdout + result.stderr
  assert result.stdout == ''
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'error: ' in lines[0], result.stderr
  for pattern in patterns:
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize('script', SCRIPTS)
def test_help_prints_usage_and_exits_0(script):
  for flag in ('--help', '-h'):
    result = launch(script, flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'usage: {script} --config=FILE '
                                    '[--workdir=DIR]')
    assert '--dry-run' in result.stdout and result.stderr == ''


def test_train_gpu_dry_run_prints_env_and_command():
  exports, command = dry_run(
      'train_gpu.sh', f'--config={CONFIG}', '--workdir', 'runs/my run',
      '--config.train.steps=100', '--stop_at_step', '50',
      env={'PYTHON': '/opt/venv/bin/python'})
  assert exports == {'CUDA_VISIBLE_DEVICES': '0',
                     'XLA_PYTHON_CLIENT_MEM_FRACTION': '.90',
                     'TF_CPP_MIN_LOG_LEVEL': '1'}
  assert command == ('/opt/venv/bin/python -m resnet_jax.main '
                     f"--config={CONFIG} '--workdir=runs/my run' --mode=train "
                     '--config.train.steps=100 --stop_at_step=50')


def test_train_gpu_picks_one_gpu_and_keeps_user_settings():
  exports, command = dry_run('train_gpu.sh', f'--config={CONFIG}',
                             '--workdir=w', '--gpu=3')
  assert exports['CUDA_VISIBLE_DEVICES'] == '3'
  assert command.startswith('python3 -m resnet_jax.main ')
  # A scheduler's CUDA_VISIBLE_DEVICES: its first GPU, not physical GPU 0.
  # User-set allocator variables win, and the fraction is then left alone.
  exports, _ = dry_run('train_gpu.sh', f'--config={CONFIG}', '--workdir=w',
                       env={'CUDA_VISIBLE_DEVICES': '5,6',
                            'XLA_PYTHON_CLIENT_PREALLOCATE': 'false',
                            'TF_CPP_MIN_LOG_LEVEL': '0'})
  assert exports == {'CUDA_VISIBLE_DEVICES': '5',
                     'XLA_PYTHON_CLIENT_PREALLOCATE': 'false',
                     'TF_CPP_MIN_LOG_LEVEL': '0'}
  # jaxlib raises if both fraction variables are set: never add the old one.
  exports, _ = dry_run('train_gpu.sh', f'--config={CONFIG}', '--workdir=w',
                       env={'XLA_CLIENT_MEM_FRACTION': '.5'})
  assert exports['XLA_CLIENT_MEM_FRACTION'] == '.5'
  assert 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in exports
  result = launch('train_gpu.sh', f'--config={CONFIG}', '--workdir=w',
                  '--gpu=0,1', '--dry-run')
  assert_one_line_error(result, 'one device', 'train_all_gpus.sh')


def test_dry_run_env_variable_runs_nothing(tmp_path):
  marker = tmp_path / 'ran'
  fake = tmp_path / 'python'
  fake.write_text(f'#!/bin/sh\ntouch {marker}\n')
  fake.chmod(0o755)
  result = launch('train_gpu.sh', f'--config={CONFIG}', '--workdir=w',
                  env={'DRY_RUN': '1', 'PYTHON': str(fake)})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines()[-1].startswith(f'{fake} -m ')
  assert not marker.exists()


def test_train_all_gpus_dry_run_adds_data_parallel_xla_flag():
  exports, command = dry_run('train_all_gpus.sh', f'--config={CONFIG}',
                             '--workdir=w', '--config.train.batch_size=512')
  assert 'CUDA_VISIBLE_DEVICES' not in exports  # every GPU stays visible
  assert exports['XLA_FLAGS'] == '--xla_gpu_enable_latency_hiding_scheduler=true'
  assert exports['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '.90'
  assert command.endswith(f'-m resnet_jax.main --config={CONFIG} --workdir=w '
                          '--mode=train --config.train.batch_size=512')
  # --gpus narrows the set; the user's XLA_FLAGS are kept and extended, and a
  # flag the user already set is not overridden.
  exports, command = dry_run(
      'train_all_gpus.sh', f'--config={CONFIG}', '--workdir=w', '--gpus=0,1',
      '--coordinator_address=h0:1234', '--num_processes=2', '--process_id=1',
      env={'XLA_FLAGS': '--xla_dump_to=/tmp/d'})
  assert exports['CUDA_VISIBLE_DEVICES'] == '0,1'
  assert exports['XLA_FLAGS'] == ("'--xla_dump_to=/tmp/d "
                                  "--xla_gpu_enable_latency_hiding_scheduler=true'")
  assert command.endswith('--coordinator_address=h0:1234 --num_processes=2 '
                          '--process_id=1')
  own = '--xla_gpu_enable_latency_hiding_scheduler=false'
  exports, _ = dry_run('train_all_gpus.sh', f'--config={CONFIG}', '--workdir=w',
                       env={'XLA_FLAGS': own})
  assert exports['XLA_FLAGS'] == own


def test_slurm_dry_run_prints_srun_line():
  env = {'SLURM_JOB_NUM_NODES': '2', 'SLURM_GPUS_PER_NODE': 'h100:4',
         'SLURM_CPUS_PER_TASK': '16'}
  exports, command = dry_run('train_slurm.sbatch', f'--config={CONFIG}',
                             '--workdir=runs/s', '--config.train.steps=10',
                             env=env)
  assert exports['JAX_LOCAL_DEVICE_IDS'] == '0,1,2,3'
  assert exports['XLA_FLAGS'] == '--xla_gpu_enable_latency_hiding_scheduler=true'
  assert exports['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '.90'
  assert exports['TF_CPP_MIN_LOG_LEVEL'] == '1'
  assert command == (
      'srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=16 '
      '--kill-on-bad-exit=1 python3 -m resnet_jax.main '
      f'--config={CONFIG} --workdir=runs/s --mode=train --config.train.steps=10')
  # Outside a job: still a preview (with a note on stderr), never a run.
  exports, command = dry_run('train_slurm.sbatch', f'--config={CONFIG}',
                             '--workdir=w')
  assert command.startswith('srun --ntasks-per-node=1 ')
  assert 'JAX_LOCAL_DEVICE_IDS' not in exports
  exports, _ = dry_run('train_slurm.sbatch', f'--config={CONFIG}',
                       '--workdir=w', env={'GPUS_PER_NODE': '2'})
  assert exports['JAX_LOCAL_DEVICE_IDS'] == '0,1'
  assert_one_line_error(
      launch('train_slurm.sbatch', f'--config={CONFIG}', '--workdir=w'),
      'not inside a SLURM job')


def test_slurm_header_asks_for_one_task_per_node():
  with open(os.path.join(LAUNCH, 'train_slurm.sbatch')) as f:
    header = [l.split()[1] for l in f if l.startswith('#SBATCH')]
  names = {h.split('=')[0] for h in header}
  assert '--ntasks-per-node=1' in header
  assert {'--nodes', '--gpus-per-node', '--time'} <= names


def test_evaluate_dry_run_passes_checkpoint_and_split(tmp_path):
  exports, command = dry_run('evaluate.sh', f'--config={CONFIG}',
                             f'--workdir={tmp_path}', '--checkpoint', 'latest',
                             '--split=val', '--config.data.dir=/data/c10')
  assert exports['CUDA_VISIBLE_DEVICES'] == '0'
  assert 'XLA_FLAGS' not in exports
  assert command == (f'python3 -m resnet_jax.main --config={CONFIG} '
                     f'--workdir={tmp_path} --mode=evaluate --checkpoint=latest '
                     '--split=val --config.data.dir=/data/c10')
  _, command = dry_run('evaluate.sh', f'--config={CONFIG}',
                       f'--workdir={tmp_path}')
  assert '--checkpoint=best --split=test' in command
  assert_one_line_error(
      launch('evaluate.sh', f'--config={CONFIG}', '--workdir=no/such/dir'),
      'workdir not found')


@pytest.mark.parametrize('script', SCRIPTS)
def test_bad_command_lines_are_one_line_errors(script, tmp_path):
  ok = (f'--config={CONFIG}', f'--workdir={tmp_path}')
  assert_one_line_error(launch(script, *ok, '--bogus=1'), '--bogus')
  assert_one_line_error(launch(script, *ok, '-x'), '-x')
  assert_one_line_error(launch(script, *ok, '--mode=evaluate'), '--mode')
  assert_one_line_error(launch(script, f'--workdir={tmp_path}'), '--config')
  assert_one_line_error(launch(script, '--config=nope.py',
                               f'--workdir={tmp_path}'), 'nope.py')
  assert_one_line_error(launch(script, *ok, '--config.train.steps', '100'),
                        "'100'", '--config.KEY=VALUE')
  assert_one_line_error(launch(script, *ok, '--workdir'), 'needs a value')


RECORDER = '''#!/bin/sh
# Records its arguments and the launchers' variables as JSON.
{python} - "$@" <<'EOF' > {out}
import json, os, sys
keep = {keep!r}
print(json.dumps({{'argv': sys.argv[1:],
                  'env': {{k: v for k, v in os.environ.items() if k in keep}}}}))
EOF
'''


def recorder(tmp_path, name):
  out = tmp_path / f'{name}.json'
  path = tmp_path / name
  path.write_text(RECORDER.format(python=shutil.which('python3') or 'python3',
                                  out=out, keep=SCRUB))
  path.chmod(path.stat().st_mode | stat.S_IXUSR)
  return path, out


def test_real_run_execs_what_dry_run_prints(tmp_path):
  """Without --dry-run the launcher runs exactly the printed command."""
  python, out = recorder(tmp_path, 'python')
  args = (f'--config={CONFIG}', f'--workdir={tmp_path}/w x',
          '--config.train.steps=3')
  env = {'PYTHON': str(python)}
  exports, command = dry_run('train_gpu.sh', *args, env=env)
  result = launch('train_gpu.sh', *args, env=env)
  assert result.returncode == 0, result.stderr
  assert result.stderr.strip().splitlines()[-1] == command  # logged
  record = json.loads(out.read_text())
  assert record['argv'] == ['-m', 'resnet_jax.main', *args[:2], '--mode=train',
                            args[2]]
  assert record['env'] == {**{k: v.strip("'") for k, v in exports.items()},
                           'PYTHON': str(python)}


def test_real_slurm_run_calls_srun(tmp_path):
  srun, out = recorder(tmp_path, 'srun')
  env = {'PATH': f'{tmp_path}:{os.environ["PATH"]}', 'SLURM_JOB_ID': '7',
         'SLURM_JOB_NUM_NODES': '3', 'SLURM_GPUS_ON_NODE': '8'}
  result = launch('train_slurm.sbatch', f'--config={CONFIG}', '--workdir=w',
                  env=env)
  assert result.returncode == 0, result.stderr
  record = json.loads(out.read_text())
  assert record['argv'][:4] == ['--nodes=3', '--ntasks=3', '--ntasks-per-node=1',
                                '--kill-on-bad-exit=1']
  assert record['argv'][4:7] == ['python3', '-m', 'resnet_jax.main']
  assert record['env']['JAX_LOCAL_DEVICE_IDS'] == '0,1,2,3,4,5,6,7'
  # No GPU count at all inside a job: refuse rather than use one GPU a node.
  del env['SLURM_GPUS_ON_NODE']
  assert_one_line_error(
      launch('train_slurm.sbatch', f'--config={CONFIG}', '--workdir=w',
             env=env), 'GPUS_PER_NODE')


def test_dry_run_output_is_a_valid_shell_script():
  for script in SCRIPTS:
    result = launch(script, '--dry-run', f'--config={CONFIG}', '--workdir=/',
                    "--config.model.name=it's")
    assert result.returncode == 0, result.stderr
    check = subprocess.run(['bash', '-n'], input=result.stdout, text=True,
                           capture_output=True)
    assert check.returncode == 0, check.stderr


def test_shellcheck():
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed (apt-get install shellcheck)')
  scripts = [os.path.join('launch', s)
             for s in ('common.sh', *SCRIPTS, *OTHER_SCRIPTS)]
  result = subprocess.run(['shellcheck', '-x', *scripts], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr


def test_launchers_are_executable():
  for script in (*SCRIPTS, *OTHER_SCRIPTS):
    mode = os.stat(os.path.join(LAUNCH, script)).st_mode
    assert mode & stat.S_IXUSR, f'chmod +x launch/{script}'


@pytest.mark.parametrize('script', SCRIPTS)
def test_without_workdir_resnet_jax_main_picks_its_default(script):
  """No --workdir: the command carries none, so resnet_jax.main trains (or
  evaluates) runs/NAME, the same default as typed by hand."""
  _, command = dry_run(script, f'--config={CONFIG}',
                       env={'GPUS_PER_NODE': '2'})
  assert f'-m resnet_jax.main --config={CONFIG} --mode=' in command
  assert '--workdir' not in command
