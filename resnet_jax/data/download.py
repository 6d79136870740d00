"""CIFAR-10's and CIFAR-100's official binary archives, downloaded once into
a cache folder.

With data.source=cifar10_binary (cifar100_binary) and no data.dir, the data
comes from CACHE/cifar-10-batches-bin (CACHE/cifar-100-binary), CACHE being
$RESNET_JAX_DATA or ~/.cache/resnet_jax. On first use the archive is
downloaded (with a progress bar), checked against its published MD5 and
extracted into a temporary folder that is renamed into place only when
complete: a kill or a failure at any point leaves no folder that passes for
the dataset, and the next run starts over, removing what a killed download
on this host left behind.
$RESNET_JAX_CIFAR10_URL and $RESNET_JAX_CIFAR10_MD5 (CIFAR100 for CIFAR-100)
point it at another copy (a mirror; the tests' local server).
`python -m resnet_jax.data.download [cifar10|cifar100]` fetches one alone
and prints its folder.
"""
import dataclasses
import hashlib
import http.client
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request

from resnet_jax.errors import DataError, exit_with


@dataclasses.dataclass(frozen=True)
class Archive:
  name: str  # In messages.
  url: str
  md5: str  # Published with it.
  folder: str  # Its top folder, the dataset.
  env: str  # $RESNET_JAX_{env}_URL and _MD5 override url and md5.


# The MD5s are those published on the CIFAR page.
CIFAR10 = Archive('CIFAR-10',
                  'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
                  'c32a1d4ab5d03f1284b67883e8d87530', 'cifar-10-batches-bin',
                  'CIFAR10')
CIFAR100 = Archive('CIFAR-100',
                   'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz',
                   '03b5dce01913d631647c71ecec9e9cb8', 'cifar-100-binary',
                   'CIFAR100')
# Per connection attempt and network read, not for the whole download: an
# offline machine whose packets go nowhere still ends within a minute.
TIMEOUT_S = 20
TEMPORARY = '.download-'  # Prefix of a download's temporary folder.


def cache_dir() -> str:
  return (os.environ.get('RESNET_JAX_DATA') or
          os.path.join(os.path.expanduser('~'), '.cache', 'resnet_jax'))


def fetch(archive: Archive, download: bool = True) -> str:
  """The cached dataset folder of `archive`, downloaded and extracted if
  absent."""
  cache = cache_dir()
  target = os.path.join(cache, archive.folder)
  if os.path.isdir(target):  # Only ever created whole, by a rename.
    return target
  url = os.environ.get(f'RESNET_JAX_{archive.env}_URL', archive.url)
  if not download:
    raise DataError(f'{archive.name} is not in {target} and '
                    f'data.download=False; download {url} and pass '
                    f'--config.data.dir=<its {archive.folder} folder>, or '
                    'allow the download')
  try:
    os.makedirs(cache, exist_ok=True)
    _remove_abandoned(cache)
    with tempfile.TemporaryDirectory(prefix=_temporary_prefix(),
                                     dir=cache) as tmp:
      path = os.path.join(tmp, os.path.basename(url) or 'archive.tar.gz')
      _fetch(url, path, archive)
      _check_md5(path, os.environ.get(f'RESNET_JAX_{archive.env}_MD5',
                                      archive.md5), url)
      _extract(path, tmp, archive.folder)
      try:
        os.rename(os.path.join(tmp, archive.folder), target)
      except OSError:
        if not os.path.isdir(target):  # Else another process was first.
          raise
  except OSError as e:  # A full disk, no permission.
    raise DataError(f'could not store {archive.name} in {cache}: '
                    f'{e.strerror or e}') from None
  return target


def _temporary_prefix() -> str:
  # Host and process in the name: only a dead process's folder is removed,
  # never that of a download running elsewhere on a shared cache.
  return f'{TEMPORARY}{socket.gethostname()}-{os.getpid()}-'


def _remove_abandoned(cache: str):
  """Removes the temporary folders of killed downloads on this host."""
  ours = f'{TEMPORARY}{socket.gethostname()}-'
  for name in os.listdir(cache):
    pid = name[len(ours):].split('-', 1)[0] if name.startswith(ours) else ''
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(os.path.join(cache, name), ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


def _fetch(url: str, path: str, archive: Archive):
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  try:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, \
        open(path, 'wb') as out:
      size = int(response.headers.get('Content-Length') or 0) or None
      with tqdm(total=size, unit='B', unit_scale=True, leave=False,
                desc=f'downloading {url}') as bar:
        while chunk := response.read(1 << 20):
          out.write(chunk)
          bar.update(len(chunk))
      if size is not None and bar.n != size:
        raise ConnectionError(f'the connection closed after {bar.n:,} of '
                              f'{size:,} bytes')
  except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
          ConnectionError) as e:
    reason = getattr(e, 'reason', None) or e
    raise DataError(
        f'could not download {archive.name} from {url}: {reason} (no '
        f'network? download that file where there is one and extract it into '
        f'{cache_dir()} (it holds {archive.folder}/), or pass '
        f'--config.data.dir=PATH/{archive.folder}, or set '
        f'RESNET_JAX_{archive.env}_URL to a mirror)') from None


def _check_md5(path: str, expected: str, url: str):
  digest = hashlib.md5()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  if digest.hexdigest() != expected:
    raise DataError(f'{url}: MD5 {digest.hexdigest()}, expected {expected} '
                    '(a truncated or altered download); nothing was kept, '
                    'run again to retry')


def _extract(archive: str, into: str, folder: str):
  try:
    with tarfile.open(archive) as tar:
      tar.extractall(into, filter='data')
  except (tarfile.TarError, EOFError) as e:
    raise DataError(f'{archive}: not a readable tar.gz ({e})') from None
  if not os.path.isdir(os.path.join(into, folder)):
    raise DataError(f'{archive} holds no {folder}/ folder')


def main(argv) -> None:
  """`python -m resnet_jax.data.download [cifar10|cifar100]`: fetches the
  archive into the cache (as a first run would) and prints its folder."""
  archives = {'cifar10': CIFAR10, 'cifar100': CIFAR100}
  name = argv[1] if len(argv) > 1 else 'cifar10'
  if len(argv) > 2 or name not in archives:
    exit_with(f'usage: python -m resnet_jax.data.download '
              f'[{"|".join(archives)}], not {" ".join(argv[1:])}')
  try:
    print(fetch(archives[name]))
  except DataError as e:
    exit_with(str(e))


if __name__ == '__main__':
  main(sys.argv)
