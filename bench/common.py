"""What every benchmark shares (bench/README.md). `import common` comes
first: it puts this checkout first on sys.path. `python bench/common.py`
prints the environment as one JSON line (environment_in_child).
"""
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
if sys.path[0] != ROOT:
  sys.path.insert(0, ROOT)


def cpu_model() -> str:
  """'AMD EPYC (family 25 model 17, AVX-512)': the name alone can hide the
  generation, and AVX-512 changes XLA:CPU's speed."""
  try:
    with open('/proc/cpuinfo') as f:
      info = dict(line.split(':', 1) for line in f.read().split('\n\n')[0]
                  .splitlines() if ':' in line)
  except OSError:
    return platform.processor() or 'unknown'
  info = {k.strip(): v.strip() for k, v in info.items()}
  vector = ('AVX-512' if 'avx512f' in info.get('flags', '').split()
            else 'no AVX-512')
  return (f'{info.get("model name", "unknown")} (family '
          f'{info.get("cpu family", "?")} model {info.get("model", "?")}, '
          f'{vector})')


def version(package: str):
  """Installed version, without importing it (torch takes seconds)."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def environment() -> dict:
  """Date, versions, the device JAX sees, the CPU and its cores."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    driver = subprocess.run(
        ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
        capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    driver = None
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'python': platform.python_version(), 'jax': jax.__version__,
      'jaxlib': version('jaxlib'), 'flax': version('flax'),
      'torch': version('torch'), 'backend': jax.default_backend(),
      'device': jax.devices()[0].device_kind,
      'device_count': jax.device_count(), 'driver': driver,
      'cpu': cpu_model(), 'cores': len(os.sched_getaffinity(0))}


def environment_in_child() -> dict:
  """environment(), read by a child process: JAX started here would hold
  most of the GPU's memory through every later child."""
  return last_json(subprocess.run(
      [sys.executable, os.path.join(BENCH, 'common.py')], cwd=ROOT,
      capture_output=True, text=True, check=True).stdout)


def header(env: dict) -> str:
  """One comment line that names where and with what the figures came."""
  return (f'# {env["device_count"]} x {env["device"]} ({env["backend"]}), '
          f'{env["cpu"]}, {env["cores"]} cores; python {env["python"]}, jax '
          f'{env["jax"]}, flax {env["flax"]}, torch {env["torch"] or "-"}; '
          f'command: {" ".join(sys.argv)}')


def names(text: str) -> list:
  """argparse type of a comma-separated list."""
  return [s for s in text.split(',') if s]


def ints(text: str) -> list:
  return [int(s) for s in names(text)]


def jax_sync(carry):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.block_until_ready(carry)


def time_loop(step, carry, steps, warmup=0, repeats=1, sync=jax_sync):
  """Times `carry = step(carry)`: the first call (tracing, compiling) alone,
  `warmup` untimed calls, then `repeats` windows of `steps` calls, each
  closed by sync(carry) (which waits for the devices and returns carry) and
  holding nothing else. Returns (first call s, [s per step of each window],
  the last carry)."""
  start = time.perf_counter()
  carry = sync(step(carry))
  first = time.perf_counter() - start
  for _ in range(warmup):
    carry = step(carry)
  carry = sync(carry)
  windows = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      carry = step(carry)
    carry = sync(carry)
    windows.append((time.perf_counter() - start) / steps)
  return first, windows, carry


def last_json(text: str):
  """The last line of a child's output, a JSON object."""
  return json.loads(text.strip().splitlines()[-1])


def write_json(path: str, report):
  """`report` to `path`, replaced whole (workdir.write_text): never torn."""
  from resnet_jax import workdir  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  workdir.write_text(path, json.dumps(report, indent=1))


class Rows(list):
  """A benchmark's rows; with a path, {**fields, 'rows': [...]} is rewritten
  there after each row, so a run stopped midway keeps what it measured."""

  def __init__(self, path=None, **fields):
    super().__init__()
    self.path, self.fields = path, fields

  def add(self, row: dict):
    self.append(row)
    if self.path:
      write_json(self.path, {**self.fields, 'rows': list(self)})


def start_table(args, *columns) -> Rows:
  """Prints the environment header and a table's head; the Rows to fill
  (written to args.json, if given, with the command and the environment)."""
  env = environment()
  print(header(env))
  print(table(*columns))
  print(table('---', len(columns)))
  return Rows(getattr(args, 'json', None), command=' '.join(sys.argv),
              environment=env)


def add_json(parser):
  parser.add_argument('--json', metavar='FILE',
                      help='also write the rows here, rewritten after each row')


def table(*cells) -> str:
  """A markdown table row; table('---', n) the rule under n columns."""
  if len(cells) == 2 and cells[0] == '---':
    cells = ('---',) * cells[1]
  return '| ' + ' | '.join(map(str, cells)) + ' |'


if __name__ == '__main__':
  print(json.dumps(environment()))
