"""The base config every `configs/*.py` file starts from, and its validation.

The base lives in the package (not in configs/) so that config files load the
same way from any working directory: `from resnet_jax import config`.
"""
import ml_collections

from resnet_jax.cpu_conv import CONV_IMPLS
from resnet_jax.data import SOURCES
from resnet_jax.models import MODELS, SHORTCUTS
from resnet_jax.errors import ConfigError

# The registries themselves (dicts: `in` and join see their keys), so a model
# or source registered at run time is a valid choice.
CHOICES = {
    'model.name': MODELS,
    'model.shortcut': SHORTCUTS,
    'model.conv_impl': CONV_IMPLS,
    'data.source': SOURCES,
    'data.streaming': ('auto', 'off', 'on'),
    'train.optimizer': ('sgd', 'adamw'),
    'train.schedule': ('cosine', 'linear', 'step'),
    'train.dtype': ('float32', 'bfloat16', 'float16'),
    'train.on_nonfinite': ('stop', 'skip'),
    'train.rank_by': ('ema', 'raw'),
}
# The built-in models without a width factor or dropout.
IGNORE_WRN_KEYS = ('resnet', 'cnn', 'preact_resnet')
# Keys that describe the architecture: a checkpoint restores only into a
# config that agrees on all of them.
ARCHITECTURE_KEYS = ('model.name', 'model.num_layers', 'model.shortcut',
                     'model.num_classes', 'model.width_factor',
                     'data.image_size', 'data.grayscale')


def base_config() -> ml_collections.ConfigDict:
  """ResNet-20, 1x1-conv shortcuts, He et al.'s 64k steps with a modern recipe."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet'
  # n, the blocks per stage: ResNet and cnn depth 6n+2 (3: ResNet-20), wrn
  # 6n+4 (4: WRN-28), preact_resnet 8n+2 (2: PreAct ResNet-18).
  c.model.num_layers = 3
  c.model.shortcut = 'conv'  # resnet: 1x1-conv (B) or zero-pad (A) shortcuts.
  c.model.width_factor = 1  # wrn: k, stage widths 16k, 32k, 64k.
  c.model.dropout = 0.0  # wrn: dropout rate between a block's convolutions.
  c.model.num_classes = 10
  # 'auto': the CPU backend differentiates convolutions through cpu_conv.py
  # (same mathematics, faster on XLA:CPU); GPUs and TPUs use XLA's own.
  c.model.conv_impl = 'auto'

  c.data = ml_collections.ConfigDict()
  # CIFAR-10's official binary archive, downloaded once into
  # ~/.cache/resnet_jax and MD5-checked (data/download.py): a plain
  # `pip install -e .` serves it. tfds (other datasets; preparing one needs
  # the tfds-prepare extra) and folder (your images) are one flag away.
  c.data.source = 'cifar10_binary'
  c.data.dir = ''  # The data folder; for tfds its data_dir ('': default).
  # 45,000 / 5,000 for CIFAR-10. 0: train on all 50,000 with no validation
  # during the run; the latest checkpoint is the result (report the test split).
  c.data.val_fraction = 0.1
  c.data.image_size = 32
  c.data.grayscale = False
  c.data.synthetic_examples = 1024  # Per split, for data.source=synthetic.
  c.data.synthetic_seed = 0
  c.data.name = 'cifar10'  # data.source=tfds: the TFDS dataset name.
  # tfds: download and prepare if absent; cifar10_binary without data.dir:
  # download CIFAR-10 into ~/.cache/resnet_jax (data/download.py).
  c.data.download = True
  c.data.skip_corrupt = False  # folder, tfds: skip (and list) unreadable images.
  c.data.decode_threads = 0  # folder, tfds: decoding threads; 0: one per core.
  c.data.max_in_memory_gb = 4.0  # Largest decoded split held in memory.
  # Training streams train/val from disk (grain, data/stream.py) when 'on', or
  # when 'auto' and either split decodes to more than max_in_memory_gb; 'off'
  # refuses such a split instead.
  c.data.streaming = 'auto'
  # Training augmentation on the device (data/augment.py): He et al.'s crop
  # (4-pixel zero padding) and horizontal flip, each on or off; cutout
  # (DeVries & Taylor: a square of this side zeroed after normalization at a
  # random centre, clipped at the borders; 16 on CIFAR-10; 0: off).
  c.data.random_crop = True
  c.data.random_flip = True
  c.data.cutout_size = 0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128
  c.train.steps = 64_000  # He et al.: 64k steps of 128, ~182 epochs.
  c.train.optimizer = 'sgd'
  c.train.learning_rate = 0.1
  c.train.momentum = 0.9
  c.train.nesterov = True  # sgd: Nesterov momentum, else He et al.'s plain.
  # Clip the gradient to this global norm before the optimizer; 0: off.
  c.train.grad_clip_norm = 0.0
  c.train.schedule = 'cosine'
  c.train.warmup_steps = 1_000
  c.train.step_boundaries = (0.5, 0.75)  # Fractions of steps, for 'step'.
  c.train.step_factor = 0.1
  c.train.weight_decay = 5e-4  # Not applied to BatchNorm params and biases.
  c.train.label_smoothing = 0.1
  # Mixing (0: off): mixup (Zhang et al.) and CutMix (Yun et al.) with
  # Beta(alpha, alpha) proportions; with both on, each batch takes one of
  # the two at random. Targets become soft (docs/training.md).
  c.train.mixup_alpha = 0.0
  c.train.cutmix_alpha = 0.0
  # An exponential moving average of the weights and BatchNorm statistics,
  # per member, with the warm-up min(ema_decay, (1 + t) / (10 + t)) at step
  # t (0: off). Evaluations report both; rank_by says which one ranks the
  # best checkpoint; evaluate/samples/predict use the average (--weights).
  c.train.ema_decay = 0.0
  c.train.rank_by = 'ema'
  c.train.dtype = 'float32'
  # A non-finite loss or gradient is never applied; 'stop' ends the run
  # (exit 2, last good checkpoint kept), 'skip' goes on to the next batch.
  c.train.on_nonfinite = 'stop'
  c.train.eval_every = 1_000
  c.train.log_every = 50
  c.train.eval_batch_size = 1_000
  # Evaluate on the mean logits of each image and its mirror image (flip
  # test-time augmentation): validation, --mode=evaluate/samples/predict.
  c.train.eval_flip = False
  # Also average views shifted by this many pixels (airbench's translation
  # test-time augmentation, inference.eval_step; 0: off).
  c.train.eval_translate = 0
  # Members trained together in one vmapped step: train.num_seeds seeds
  # (seed, seed+1, ...) for every learning rate of train.sweep_learning_rates
  # and weight decay of train.sweep_weight_decays (empty: train.learning_rate
  # and train.weight_decay). Each member is the run its seed and values give.
  c.train.num_seeds = 1
  c.train.sweep_learning_rates = ()
  c.train.sweep_weight_decays = ()
  # With several devices, split the members over them instead of the batch
  # (members must be a multiple of the device count).
  c.train.shard_members = False
  # Members per vmapped chunk of a step, the chunks one after another; bounds
  # the step's memory. 0: auto, 1 on the CPU backend (vmapped members run
  # XLA:CPU's slow grouped convolutions: 8 members cost 15x one, in chunks
  # of 1 8.1x; docs/training.md), else all at once. Not with
  # train.shard_members.
  c.train.member_chunk = 0
  # (first, last): a jax.profiler trace of steps first..last in
  # WORKDIR/profile (resnet_jax/profiling.py); (0, 0): none.
  c.train.profile_steps = (0, 0)
  return c


def members(config) -> list[dict]:
  """The run's members, seeds innermost: [{seed, learning_rate, weight_decay}]."""
  t = config.train  # .get: configs saved before members lack the keys.
  rates = tuple(t.get('sweep_learning_rates', ())) or (t.learning_rate,)
  decays = tuple(t.get('sweep_weight_decays', ())) or (t.weight_decay,)
  return [{'seed': config.seed + k, 'learning_rate': float(lr),
           'weight_decay': float(wd)}
          for lr in rates for wd in decays
          for k in range(t.get('num_seeds', 1))]


def lookup(config, dotted: str):
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


def unknown_key(config, dotted: str, shown_as: str = ''):
  """None if `dotted` is a key of `config`, else a message naming it (as
  `shown_as`, e.g. the flag) and the keys where the path stopped."""
  node, parts = config, dotted.split('.')
  for i, part in enumerate(parts):
    if not hasattr(node, 'keys') or part not in node:
      where = '.'.join(parts[:i]) or 'the config'
      keys = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else ''
      return (f'unknown config key {shown_as or dotted}; keys of {where}: '
              f'{keys}')
    node = node[part]
  return None


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved config with the keys added since (absent from older
  runs) at their base_config() values, as a config file would give them."""
  config = ml_collections.ConfigDict(saved)
  for section, defaults in base_config().items():
    if section not in config:
      config[section] = defaults
    elif isinstance(defaults, ml_collections.ConfigDict):
      for key, value in defaults.items():
        if key not in config[section]:
          config[section][key] = value
  return config


def validate(config) -> None:
  """Raises ConfigError naming the key and the valid values."""
  for key, choices in CHOICES.items():
    if lookup(config, key) not in choices:
      raise ConfigError(f'{key}={lookup(config, key)!r} is not valid; choose '
                        f'one of: {", ".join(choices)}')
  at_least = {'model.num_layers': 1, 'model.num_classes': 2,
              'model.width_factor': 1,
              'data.image_size': 4, 'data.synthetic_examples': 2,
              'train.batch_size': 1, 'train.steps': 1, 'train.eval_every': 1,
              'train.log_every': 1, 'train.eval_batch_size': 1,
              'train.warmup_steps': 0, 'data.decode_threads': 0, 'seed': 0,
              'data.synthetic_seed': 0, 'train.num_seeds': 1,
              'train.member_chunk': 0, 'data.cutout_size': 0,
              'train.eval_translate': 0}
  for key, low in at_least.items():
    value = lookup(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ConfigError(f'{key}={value!r} must be an integer >= {low}')
  ranges = {'data.val_fraction': (0, 1, True), 'train.learning_rate': (0, None, False),
            'data.max_in_memory_gb': (0, None, False),
            'train.momentum': (0, 1, True), 'train.weight_decay': (0, None, True),
            'model.dropout': (0, 1, True),
            'train.grad_clip_norm': (0, None, True),
            'train.label_smoothing': (0, 1, True), 'train.step_factor': (0, None, False),
            'train.ema_decay': (0, 1, True), 'train.mixup_alpha': (0, None, True),
            'train.cutmix_alpha': (0, None, True)}
  for key, (low, high, closed) in ranges.items():
    value = lookup(config, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        value >= low if closed else value > low) and (high is None or value < high)
    if not ok:
      bound = f'{"[" if closed else "("}{low}, {high if high is not None else "inf"})'
      raise ConfigError(f'{key}={value!r} must be in {bound}')
  for key, default in (('model.width_factor', 1), ('model.dropout', 0)):
    if config.model.name in IGNORE_WRN_KEYS and lookup(config, key) != default:
      raise ConfigError(f'{key} applies to model.name=wrn only, not '
                        f'{config.model.name}')
  if config.train.warmup_steps >= config.train.steps:
    raise ConfigError(f'train.warmup_steps={config.train.warmup_steps} must be '
                      f'below train.steps={config.train.steps}')
  for key, positive in (('train.sweep_learning_rates', True),
                        ('train.sweep_weight_decays', False)):
    values = lookup(config, key)
    if not isinstance(values, (tuple, list)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        and (v > 0 if positive else v >= 0) for v in values):
      raise ConfigError(f'{key}={values!r} must be a tuple of numbers '
                        f'{"> 0" if positive else ">= 0"}, e.g. (0.05,0.1)')
  for key in ('train.shard_members', 'train.nesterov', 'data.random_crop',
              'data.random_flip'):
    if not isinstance(lookup(config, key), bool):
      raise ConfigError(f'{key}={lookup(config, key)!r} must be True or False')
  if config.data.cutout_size > config.data.image_size:
    raise ConfigError(f'data.cutout_size={config.data.cutout_size} must not '
                      f'exceed data.image_size={config.data.image_size}')
  if config.train.eval_translate >= config.data.image_size:
    raise ConfigError(f'train.eval_translate={config.train.eval_translate} '
                      f'must be below data.image_size={config.data.image_size}')
  if config.train.member_chunk and config.train.shard_members:
    raise ConfigError('train.member_chunk works without train.shard_members '
                      '(each device already trains whole members)')
  window = tuple(config.train.get('profile_steps', (0, 0)))
  if window != (0, 0) and not (
      len(window) == 2 and all(isinstance(s, int) and not isinstance(s, bool)
                               for s in window)
      and 1 <= window[0] <= window[1] <= config.train.steps):
    raise ConfigError(f'train.profile_steps={window} must be (first, last) '
                      f'with 1 <= first <= last <= train.steps, or (0, 0)')
  boundaries = tuple(config.train.step_boundaries)
  if (not all(isinstance(b, (int, float)) and 0 < b < 1 for b in boundaries)
      or list(boundaries) != sorted(boundaries)):
    raise ConfigError(f'train.step_boundaries={boundaries} must be increasing '
                      'fractions of train.steps in (0, 1)')


def fast_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The 30-epoch recipe shared by configs/*_fast.py: the shipped recipe
  (Nesterov, linear warmup, cosine decay, label smoothing, no decay on
  BN/biases) shortened to 10,500 steps of 128 (~30 epochs of 45,000), with
  flip test-time augmentation at evaluation."""
  c.train.steps = 10_500
  c.train.warmup_steps = 500
  c.train.eval_every = 1_050  # ~3 epochs.
  c.train.eval_flip = True
  return c


def twenty_epoch_recipe(
    c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The 30-epoch recipe in 20 epochs (7,020 steps of 128, 333 warmup),
  with an average of the weights (ema_decay 0.999) ranking the checkpoints
  and airbench's 1-pixel translation views beside the flip at evaluation;
  evaluation every 1,404 steps (4 epochs). Chosen by a 10-epoch ablation on
  validation; ResNet-20 (conv) reaches 89.82% validation accuracy with flip
  (89.96% with translation), short of the 30-epoch recipe's 91.50%
  (docs/results.md)."""
  c = fast_recipe(c)
  c.train.steps = 7_020
  c.train.warmup_steps = 333
  c.train.eval_every = 1_404
  c.train.ema_decay = 0.999
  c.train.eval_translate = 1
  return c


def gpu_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The 30-epoch recipe at batch 512, where a GPU does ~2.6x the work per
  second of batch 128 (bfloat16, H200). The learning rate scales linearly
  with the batch (0.1 at 128 -> 0.4), the warmup stays ~2 epochs of images.
  87 steps of 512 per epoch of 45,000 (the remainder dropped): 2,610 steps
  are 30 epochs. Not yet validated against the batch-128 recipe (issue 31):
  a 2-core CPU run (float32) stopped at epoch 21 of 30 for lack of time,
  validation with flip at epochs 3/6/9/12/15/18/21: 65.1/75.3/78.9/80.3/
  81.8/83.8/87.8%, against the batch-128 recipe's 66.5/78.0/80.9/84.7/85.2/
  86.4/89.2% (the gap closing as the learning rate decays)."""
  c = fast_recipe(c)
  c.train.batch_size = 512
  c.train.learning_rate = 0.4
  c.train.steps = 2_610
  c.train.warmup_steps = 174  # 2 epochs.
  c.train.eval_every = 261  # 3 epochs.
  c.train.dtype = 'bfloat16'
  return c
