"""CIFAR-10 downloaded into the cache (data/download.py), served by a local
HTTP server on 127.0.0.1 from a small generated archive: never the internet."""
import hashlib
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time

import jax
import numpy as np
import pytest

from conftest import REPO, cli_args, random_cifar, run_cli, tiny_config, write_cifar_bin
from test_cli import assert_one_line_error
from resnet_jax import data
from resnet_jax.data import download
from resnet_jax.errors import DataError


def make_archive(folder):
  """A cifar-10-binary.tar.gz of 40 train and 10 test records."""
  root = folder / 'src' / download.CIFAR10.folder
  root.mkdir(parents=True)
  train, test = random_cifar(40, seed=1), random_cifar(10, seed=2)
  write_cifar_bin(root / 'data_batch_1.bin', *train)
  write_cifar_bin(root / 'test_batch.bin', *test)
  (root / 'batches.meta.txt').write_text(
      '\n'.join(f'class{k}' for k in range(10)) + '\n')
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    tar.add(root, arcname=download.CIFAR10.folder)
  return buffer.getvalue(), train


@pytest.fixture
def server(tmp_path, monkeypatch):
  """Serves the archive; `slow_after` bytes, then a stall (for kills)."""
  body, train = make_archive(tmp_path)
  state = {'requests': 0, 'body': body, 'stall_after': None, 'cut_at': None}

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # pylint: disable=invalid-name
      state['requests'] += 1
      payload = state['body']
      self.send_response(200)
      self.send_header('Content-Length', str(len(payload)))
      self.end_headers()
      if state['cut_at'] is not None:  # Close early: a dropped connection.
        self.wfile.write(payload[:state['cut_at']])
        return
      if state['stall_after'] is not None:
        self.wfile.write(payload[:state['stall_after']])
        self.wfile.flush()
        time.sleep(30)
      self.wfile.write(payload)

    def log_message(self, *args):
      del args

  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  url = f'http://127.0.0.1:{httpd.server_address[1]}/cifar-10-binary.tar.gz'
  env = {'RESNET_JAX_DATA': str(tmp_path / 'cache'),
         'RESNET_JAX_CIFAR10_URL': url,
         'RESNET_JAX_CIFAR10_MD5': hashlib.md5(body).hexdigest()}
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  yield {**state, 'state': state, 'env': env, 'train': train,
         'target': os.path.join(env['RESNET_JAX_DATA'], download.CIFAR10.folder)}
  httpd.shutdown()


def cache_entries(server):
  cache = server['env']['RESNET_JAX_DATA']
  return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def test_downloads_once_then_trains_from_the_cache(server):
  config = tiny_config(**{'data.source': 'cifar10_binary', 'data.dir': '',
                          'data.val_fraction': 0.25, 'data.image_size': 32})
  splits = data.load_splits(config, ['train', 'val', 'test'])
  assert server['state']['requests'] == 1
  assert cache_entries(server) == [download.CIFAR10.folder]  # No temporary left.
  images, labels = server['train']
  assert len(splits['train']) == 30 and len(splits['val']) == 10
  assert len(splits['test']) == 10
  together = np.concatenate([splits['train'].labels, splits['val'].labels])
  assert sorted(together) == sorted(labels)
  assert data.class_names(config)[0] == 'class0'
  assert download.fetch(download.CIFAR10) == server['target']
  assert server['state']['requests'] == 1  # Read from the cache.
  np.testing.assert_array_equal(
      np.sort(np.concatenate([splits['train'].images, splits['val'].images])
              .reshape(40, -1), 0), np.sort(images.reshape(40, -1), 0))


def test_bad_checksum_keeps_nothing(server, monkeypatch):
  monkeypatch.setenv('RESNET_JAX_CIFAR10_MD5', '0' * 32)
  with pytest.raises(DataError, match='MD5 .*, expected 0{32}'):
    download.fetch(download.CIFAR10)
  assert cache_entries(server) == []


def test_dropped_connection_and_no_network_are_one_line_errors(server,
                                                                 monkeypatch):
  server['state']['cut_at'] = 1000
  with pytest.raises(DataError, match='could not download CIFAR-10 from'):
    download.fetch(download.CIFAR10)
  assert cache_entries(server) == []
  monkeypatch.setenv('RESNET_JAX_CIFAR10_URL', 'http://127.0.0.1:9/x.tar.gz')
  with pytest.raises(DataError, match='no network'):
    download.fetch(download.CIFAR10)
  with pytest.raises(DataError, match='data.download=False'):
    download.fetch(download.CIFAR10, download=False)
  server['state']['cut_at'] = None
  config = tiny_config(**{'data.source': 'cifar10_binary', 'data.dir': '',
                          'data.image_size': 32})
  result = run_cli(cli_args(config, server['env']['RESNET_JAX_DATA'] + '-run'),
                   env={**server['env'],
                        'RESNET_JAX_CIFAR10_URL': 'http://127.0.0.1:9/x.tgz'})
  assert_one_line_error(result, 'could not download CIFAR-10 from')


def test_a_kill_mid_download_leaves_no_dataset_and_a_rerun_completes(server):
  server['state']['stall_after'] = 2000
  fetch = [sys.executable, '-c',
           'from resnet_jax.data import download; print(download.fetch(download.CIFAR10))']
  proc = subprocess.Popen(fetch, cwd=REPO, env={**os.environ, **server['env']},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 60
  while server['state']['requests'] == 0 and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(0.5)  # Part of the archive written.
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(server['target'])
  left = [n for n in cache_entries(server) if n.startswith('.download-')]
  assert len(left) == 1, left  # The killed download's temporary folder.
  server['state']['stall_after'] = None
  result = subprocess.run(fetch, cwd=REPO, env={**os.environ, **server['env']},
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == server['target']
  assert sorted(os.listdir(server['target'])) == [
      'batches.meta.txt', 'data_batch_1.bin', 'test_batch.bin']
  assert cache_entries(server) == [download.CIFAR10.folder]  # The leftover is gone.


def test_a_full_disk_is_a_one_line_error(server):
  """A 1 KiB file size limit stands in for a full disk."""
  fetch = ['bash', '-c', 'ulimit -f 1 && exec "$@"', 'bash', sys.executable,
           '-c', 'from resnet_jax.data import download, cifar10_binary\n'
           'from resnet_jax.errors import DataError\n'
           'try: download.fetch(download.CIFAR10)\n'
           'except DataError as e: print(e)']
  result = subprocess.run(fetch, cwd=REPO, env={**os.environ, **server['env']},
                          capture_output=True, text=True, timeout=120)
  assert 'could not store CIFAR-10 in' in result.stdout, result.stderr
  assert 'File too large' in result.stdout
  assert not os.path.exists(server['target'])


def readme_first_command() -> list[str]:
  """The python part of README's first command (after the venv set-up)."""
  with open(os.path.join(REPO, 'README.md')) as f:
    block = f.read().split('```bash\n', 1)[1].split('```', 1)[0]
  line = next(l for l in block.splitlines() if l and not l.startswith('#'))
  return line.split(' && ')[-1].split()


# The command this codebase is known by, as a user types it.
THE_COMMAND = ['-m', 'resnet_jax.main', '--config=configs/resnet_conv.py']
# Overrides that make it a 2-step run on the served 40 images.
SHORTER = ['--config.train.steps=2', '--config.train.warmup_steps=1',
           '--config.train.batch_size=8', '--config.train.eval_every=2',
           '--config.train.eval_batch_size=10']


def lone_clone(folder):
  """The repository's tracked files alone in a new folder, nothing beside
  it (no ../shared data): what a user's fresh clone holds."""
  clone = folder / 'new_folder' / 'resnet_jax'
  files = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, check=True,
                         capture_output=True).stdout.decode().split('\0')
  for name in filter(None, files):  # The working tree's tracked files.
    source = os.path.join(REPO, name)
    if os.path.isfile(source):
      os.makedirs(clone / os.path.dirname(name), exist_ok=True)
      with open(source, 'rb') as f:
        (clone / name).write_bytes(f.read())
  return clone


def fresh_user_env(home, **extra):
  """A new user's environment: a fresh HOME (so the cache is
  HOME/.cache/resnet_jax), no PYTHONPATH (the clone's package is imported
  from the working directory) and no cache folder of ours set."""
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'RESNET_JAX_DATA')}
  return {**env, 'HOME': str(home), **extra}


def unused_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_the_command_offline_ends_in_one_line_saying_what_to_do(tmp_path):
  """No network (the archive's URL refuses connections): exit 2 with one
  error line that names the ways out, no traceback, within a minute."""
  home = tmp_path / 'home'
  (tmp_path / 'configs').symlink_to(os.path.join(REPO, 'configs'))
  url = f'http://127.0.0.1:{unused_port()}/cifar-10-binary.tar.gz'
  start = time.monotonic()
  result = subprocess.run(
      [sys.executable, *THE_COMMAND], cwd=tmp_path, capture_output=True,
      text=True, timeout=120, env=fresh_user_env(
          home, PYTHONPATH=REPO, RESNET_JAX_CIFAR10_URL=url))
  assert time.monotonic() - start < 60
  assert_one_line_error(result, f'could not download CIFAR-10 from {url}')
  error = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1
  cache = os.path.join(home, '.cache', 'resnet_jax')
  assert f'extract it into {cache}' in error[0]
  assert '--config.data.dir=PATH/cifar-10-batches-bin' in error[0]
  assert not os.path.exists(os.path.join(cache, download.CIFAR10.folder))


@pytest.mark.slow
def test_the_command_and_readme_first_command_train_on_a_fresh_clone(
    server, tmp_path):
  """A user's first hour: the repository alone in a new folder, a fresh
  HOME, the network replaced by the local server through the documented
  mirror variables. Exactly `python -m resnet_jax.main
  --config=configs/resnet_conv.py` (shortened to 2 steps) downloads, checks
  and trains into runs/resnet_conv, saying first what it trains on; then
  README's first command trains from the cache."""
  readme = readme_first_command()
  assert readme[0] == '.venv/bin/python', readme
  assert not any('shared' in a or 'data.dir' in a for a in readme), readme
  clone = lone_clone(tmp_path)
  env = fresh_user_env(tmp_path / 'home', **{
      k: v for k, v in server['env'].items() if k != 'RESNET_JAX_DATA'})
  result = subprocess.run([sys.executable, *THE_COMMAND, *SHORTER], cwd=clone,
                          capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith(
      f'training on 1 x cpu (jax {jax.__version__}), 1 process\n')
  assert result.stderr.startswith('workdir: runs/resnet_conv ')
  assert server['state']['requests'] == 1
  cache = tmp_path / 'home' / '.cache' / 'resnet_jax'
  assert os.path.isdir(cache / download.CIFAR10.folder)
  assert os.listdir(clone / 'runs' / 'resnet_conv' / 'checkpoints') == ['2']
  assert 'step 2: val_loss' in result.stdout + result.stderr
  result = subprocess.run([sys.executable, *readme[1:], *SHORTER], cwd=clone,
                          capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert server['state']['requests'] == 1  # From the cache.
  config = next(a.split('=', 1)[1] for a in readme if a.startswith('--config='))
  name = os.path.splitext(os.path.basename(config))[0]
  assert os.listdir(clone / 'runs' / name / 'checkpoints') == ['2']


def test_cifar100_downloads_into_its_own_folder(server, monkeypatch, tmp_path):
  """cifar100_binary without data.dir: the CIFAR-100 archive (its own URL
  and MD5 variables), cached beside CIFAR-10's, read with its fine labels."""
  root = tmp_path / 'src100' / download.CIFAR100.folder
  root.mkdir(parents=True)
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
  fine = rng.integers(0, 100, 20).astype(np.int32)
  write_cifar_bin(root / 'train.bin', images, fine, coarse_labels=fine // 5)
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    tar.add(root, arcname=download.CIFAR100.folder)
  server['state']['body'] = buffer.getvalue()
  monkeypatch.setenv('RESNET_JAX_CIFAR100_URL',
                     server['env']['RESNET_JAX_CIFAR10_URL'])
  monkeypatch.setenv('RESNET_JAX_CIFAR100_MD5',
                     hashlib.md5(buffer.getvalue()).hexdigest())
  config = tiny_config(**{'data.source': 'cifar100_binary', 'data.dir': '',
                          'data.image_size': 32, 'model.num_classes': 100})
  splits = data.load_splits(config, ['train', 'val'])
  assert server['state']['requests'] == 1
  assert cache_entries(server) == [download.CIFAR100.folder]
  assert sorted(np.concatenate([splits['train'].labels, splits['val'].labels])
                ) == sorted(fine)
  assert data.class_names(config)[99] == 'class_99'  # No names file served.
  monkeypatch.setenv('RESNET_JAX_CIFAR100_MD5', '0' * 32)
  assert download.fetch(download.CIFAR100) == os.path.join(
      server['env']['RESNET_JAX_DATA'], download.CIFAR100.folder)  # Cached.


def test_the_module_fetches_and_prints_the_folder(server):
  """`python -m resnet_jax.data.download`, as docs/gpus_and_clusters.md has
  it before the GPU check: the folder on stdout, once downloaded."""
  command = [sys.executable, '-m', 'resnet_jax.data.download']
  for _ in range(2):
    result = subprocess.run(command, cwd=REPO, capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, **server['env']})
    assert result.returncode == 0, result.stderr
    assert result.stdout == server['target'] + '\n'
  assert server['state']['requests'] == 1
  result = subprocess.run(command + ['mnist'], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert_one_line_error(result, 'usage: python -m resnet_jax.data.download')
