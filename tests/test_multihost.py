"""Two processes on localhost (gloo CPU collectives), 2 devices each."""
import os
import socket
import subprocess

import jax
import numpy as np
import pytest

from conftest import REPO, cli_args, fake_devices, run_cli, tiny_config
from test_train import restore_params


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_two_processes(config, workdir, *extra):
  port = free_port()
  env = fake_devices(2)
  procs = [subprocess.Popen(
      cli_args(config, workdir, f'--coordinator_address=localhost:{port}',
               '--num_processes=2', f'--process_id={i}', *extra),
      cwd=REPO, env={**os.environ, **env},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def assert_matches_one_process(config, tmp_path, multi, steps):
  """A 1-process run on 4 devices ends with the parameters of `multi`."""
  single = run_cli(cli_args(config, tmp_path / 'single'),
                   env=fake_devices(4))
  assert single.returncode == 0, single.stderr
  step_a, a = restore_params(str(multi))
  step_b, b = restore_params(str(tmp_path / 'single'))
  assert step_a == step_b == steps
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4,
                                                       atol=1e-5), a, b)


@pytest.mark.slow
def test_two_processes_streaming_resume_and_match_one_process_in_memory(
    tmp_path):
  """Two processes, streamed (each reads only its half of every batch),
  stopped at step 3 and resumed by both, end where one in-memory process on
  4 devices ends: the global batch is the one it samples, and the resume is
  exact."""
  config = tiny_config(**{'train.steps': 6, 'train.eval_every': 3})
  config.data.streaming = 'on'
  run_two_processes(config, tmp_path / 'multi', '--stop_at_step=3')
  assert restore_params(str(tmp_path / 'multi'))[0] == 3
  run_two_processes(config, tmp_path / 'multi')
  config.data.streaming = 'off'
  assert_matches_one_process(config, tmp_path, tmp_path / 'multi', 6)
  # Process 0 alone writes the history: each record once.
  lines = (tmp_path / 'multi' / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == len(set(lines))


def test_a_lock_process_0_cannot_take_stops_every_process(tmp_path):
  """Process 0 fails to take the run lock (its workdir is under a file):
  both processes stop with its one error line, neither waits for it."""
  (tmp_path / 'file').write_text('x')
  port = free_port()
  env = {**os.environ, **fake_devices(2)}
  procs = [subprocess.Popen(
      cli_args(tiny_config(), tmp_path / 'file' / 'w',
               f'--coordinator_address=localhost:{port}', '--num_processes=2',
               f'--process_id={i}'),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 2, err[-3000:]
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1] == (
        f'error: cannot take the run lock {tmp_path}/file/w/.lock: '
        'NotADirectoryError: Not a directory; choose a --workdir this user '
        'can create and write'), err[-3000:]
