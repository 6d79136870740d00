"""A sweep of bad input over every config key and entry point.

Each case must end with one `error: …` line, exit status 2, no traceback, and
leave an existing workdir exactly as it was.

Each case is the real command line, `python -m resnet_jax.main ARGS` less the
interpreter start: a fork server imports resnet_jax.main once and forks one
process per case, which runs absl's app.run on its own argv. That saves ~2 s
of imports per case (~90 cases) and checks the same thing.
"""
import multiprocessing
import os
import sys
import tempfile

from conftest import REPO, cli_args, snapshot, tiny_config
from resnet_jax import config as config_lib

# Keys whose wrong-type value is caught by the flag parser, and a value of the
# right type that is still invalid (None: every value of the type is valid).
INVALID_VALUES = {
    'seed': -1, 'model.name': 'vgg', 'model.num_layers': 0,
    'model.shortcut': 'identity', 'model.num_classes': 1,
    'model.conv_impl': 'cudnn', 'model.width_factor': 0, 'model.dropout': 1.5,
    'data.source': 'imagenet', 'data.dir': '/no/such/folder',
    'data.val_fraction': 1.0, 'data.image_size': 2, 'data.grayscale': None,
    'data.synthetic_examples': 1, 'data.synthetic_seed': -3,
    'data.name': 'no_such_dataset', 'data.download': None,
    'data.skip_corrupt': None, 'data.decode_threads': -1,
    'data.max_in_memory_gb': -1.0, 'data.streaming': 'sometimes',
    'train.batch_size': 0, 'train.steps': 0, 'train.optimizer': 'lion',
    'train.learning_rate': -0.1, 'train.momentum': 1.5,
    'train.nesterov': None, 'train.grad_clip_norm': -1.0,
    'train.schedule': 'exponential', 'train.warmup_steps': -1,
    'train.step_boundaries': '(0.9,0.1)', 'train.step_factor': 0.0,
    'train.weight_decay': -1e-4, 'train.label_smoothing': 1.0,
    'train.dtype': 'int8', 'train.on_nonfinite': 'ignore',
    'train.eval_every': 0, 'train.log_every': 0, 'train.eval_batch_size': 0,
    'train.eval_flip': None, 'train.num_seeds': 0,
    'train.sweep_learning_rates': '(0.1,-1)',
    'train.sweep_weight_decays': '(-1,)', 'train.shard_members': None,
    'train.member_chunk': -1, 'train.profile_steps': '(5,3)',
    'data.random_crop': None, 'data.random_flip': None,
    'data.cutout_size': -1, 'train.mixup_alpha': -0.2,
    'train.cutmix_alpha': -1.0, 'train.ema_decay': 1.5,
    'train.rank_by': 'best', 'train.eval_translate': -1,
}
# data.dir and data.name only matter to the sources that read them.
SOURCE_FOR = {'data.dir': 'cifar10_binary', 'data.name': 'tfds'}
WRONG_TYPE = {bool: 'maybe', int: 'abc', float: 'abc', str: None, tuple: 'abc'}


def leaf_keys(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from leaf_keys(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def config_cases():
  cases = []
  for key, default in leaf_keys(config_lib.base_config()):
    assert key in INVALID_VALUES, f'add a bad value for the new key {key}'
    extra = ([f'--config.data.source={SOURCE_FOR[key]}']
             if key in SOURCE_FOR else [])
    wrong = WRONG_TYPE[type(default)]
    if wrong is not None:
      cases.append((f'{key}:type', [f'--config.{key}={wrong}'] + extra))
    if INVALID_VALUES[key] is not None:
      cases.append((f'{key}:value',
                    [f'--config.{key}={INVALID_VALUES[key]}'] + extra))
  return cases


ENTRY_POINT_CASES = [
    ('unknown key', ['--config.train.lr=0.1']),
    ('unknown section', ['--config.optim.lr=0.1']),
    ('unknown mode', ['--mode=fly']),
    ('positional argument', ['extra']),
    ('negative stop_at_step', ['--stop_at_step=-5']),
    ('workdir is a file', ['--workdir=/etc/hostname']),
    ('evaluate: bad checkpoint name', ['--mode=evaluate', '--checkpoint=newest']),
    ('evaluate: missing step', ['--mode=evaluate', '--checkpoint=999']),
    ('evaluate: bad split', ['--mode=evaluate', '--split=dev']),
    ('evaluate: empty workdir', ['--mode=evaluate', '--workdir=/tmp/no-such-run']),
    ('samples: zero samples', ['--mode=samples', '--num_samples=0']),
    ('samples: bad checkpoint', ['--mode=samples', '--checkpoint=-1']),
    ('samples: no such member', ['--mode=samples', '--member=5']),
    ('predict: no images', ['--mode=predict']),
    ('predict: missing file', ['--mode=predict', '--images=/no/such.png']),
    ('predict: not an image', ['--mode=predict', '--images=/etc/hostname']),
]


def _main_in_child(argv, stderr_path):
  """`python -m resnet_jax.main` with `argv`, in a forked child."""
  # pylint: disable=import-outside-toplevel
  from absl import app
  from resnet_jax import main
  os.chdir(REPO)
  with open(stderr_path, 'w') as f:
    os.dup2(f.fileno(), 2)
  with open(os.devnull, 'w') as f:
    os.dup2(f.fileno(), 1)
  sys.argv = argv
  app.run(main.main, flags_parser=main.parse_flags)


def run_main_forked(argvs, workers=2):
  """Runs each argv in its own process; returns (exit status, stderr) each."""
  context = multiprocessing.get_context('forkserver')
  context.set_forkserver_preload(['resnet_jax.main'])
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    def start(i):
      path = os.path.join(tmp, f'{i}.err')
      process = context.Process(target=_main_in_child, args=(argvs[i], path))
      process.start()
      return process, path
    running = []
    for i in range(len(argvs)):
      running.append(start(i))
      if len(running) >= workers or i == len(argvs) - 1:
        for process, path in running:
          process.join(600)
          with open(path) as f:
            results.append((process.exitcode, f.read()))
        running = []
  return results


def test_bad_input_sweep(trained_workdir):
  cases = config_cases() + ENTRY_POINT_CASES
  before = snapshot(trained_workdir)
  # cli_args minus the interpreter and its `-m resnet_jax.main`, with a
  # case's --workdir replacing the trained one.
  base = cli_args(tiny_config(), trained_workdir)[2:]
  argv = lambda extra: [a for a in base if not any(
      a.startswith(e.split('=')[0] + '=') for e in extra
      if e.startswith('--workdir'))] + extra
  results = run_main_forked([argv(extra) for _, extra in cases])
  failures = []
  for (name, extra), (status, stderr) in zip(cases, results):
    lines = stderr.strip().splitlines()
    if (status != 2 or not lines or not lines[-1].startswith('error: ')
        or 'Traceback' in stderr):
      failures.append(f'{name} {extra}: exit {status}: '
                      f'{lines[-1] if lines else ""}')
  assert not failures, '\n'.join(failures)
  assert snapshot(trained_workdir) == before
  print(f'{len(cases)} bad-input cases, each a one-line error with exit 2')
