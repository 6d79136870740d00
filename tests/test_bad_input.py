"""A sweep of bad input over every config key and entry point.

Each case must end with one `error: …` line, exit status 2, no traceback, and
leave an existing workdir exactly as it was.
"""
from concurrent import futures


from conftest import cli_args, run_cli, tiny_config
from resnet_jax import config as config_lib
from test_cli import snapshot

# Keys whose wrong-type value is caught by the flag parser, and a value of the
# right type that is still invalid (None: every value of the type is valid).
INVALID_VALUES = {
    'seed': -1, 'model.name': 'vgg', 'model.num_layers': 0,
    'model.shortcut': 'identity', 'model.num_classes': 1,
    'model.conv_impl': 'cudnn',
    'data.source': 'imagenet', 'data.dir': '/no/such/folder',
    'data.val_fraction': 0.0, 'data.image_size': 2, 'data.grayscale': None,
    'data.synthetic_examples': 1, 'data.synthetic_seed': -3,
    'data.name': 'no_such_dataset', 'data.download': None,
    'data.skip_corrupt': None, 'data.decode_threads': -1,
    'data.max_in_memory_gb': -1.0, 'data.streaming': 'sometimes',
    'train.batch_size': 0, 'train.steps': 0, 'train.optimizer': 'lion',
    'train.learning_rate': -0.1, 'train.momentum': 1.5,
    'train.schedule': 'exponential', 'train.warmup_steps': -1,
    'train.step_boundaries': '(0.9,0.1)', 'train.step_factor': 0.0,
    'train.weight_decay': -1e-4, 'train.label_smoothing': 1.0,
    'train.dtype': 'int8', 'train.on_nonfinite': 'ignore',
    'train.eval_every': 0, 'train.log_every': 0, 'train.eval_batch_size': 0,
    'train.eval_flip': None, 'train.num_seeds': 0,
    'train.sweep_learning_rates': '(0.1,-1)',
    'train.sweep_weight_decays': '(-1,)', 'train.shard_members': None,
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


def test_bad_input_sweep(trained_workdir):
  cases = config_cases() + ENTRY_POINT_CASES
  before = snapshot(trained_workdir)
  args = lambda extra: [a for a in cli_args(tiny_config(), trained_workdir)
                        if not any(a.startswith(e.split('=')[0] + '=')
                                   for e in extra if e.startswith('--workdir'))
                        ] + extra
  with futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda case: run_cli(args(case[1])), cases))
  failures = []
  for (name, extra), result in zip(cases, results):
    lines = result.stderr.strip().splitlines()
    if (result.returncode != 2 or not lines or not lines[-1].startswith('error: ')
        or 'Traceback' in result.stderr):
      failures.append(f'{name} {extra}: exit {result.returncode}: '
                      f'{lines[-1] if lines else ""}')
  assert not failures, '\n'.join(failures)
  assert snapshot(trained_workdir) == before
  print(f'{len(cases)} bad-input cases, each a one-line error with exit 2')
