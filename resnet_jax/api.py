"""resnet_jax from Python: load a checkpoint and predict, get a config, train.

    import resnet_jax
    model = resnet_jax.load('pretrained/resnet20_conv_fast')
    probabilities = model.predict(images)  # uint8 (N, 32, 32, 3)

Predictions go through the command line's restore and inference path
(inference.restore_for_inference, make_eval_fn), so they are those of
--mode=evaluate. Bad input raises one UserError (ConfigError, DataError,
CheckpointError) naming the problem; nothing here ends the process, as the
command line's errors.exit_with does, which would kill a notebook's kernel.
"""
import os
import runpy
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from resnet_jax import checkpoint, compile_cache, data, inference, models
from resnet_jax import train
from resnet_jax import config as config_lib
from resnet_jax.errors import ConfigError, DataError

# The checkout's configs/ folder, beside the package.
CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


class Classifier:
  """A restored checkpoint that classifies images; made by `load`.

  Attributes:
    model: the Flax module (models.from_config(config)).
    variables: {'params', 'batch_stats'} for `model.apply(variables, x)` on
      normalized images; with several members (an ensemble), each leaf has a
      leading member axis.
    config: the run's config, keys newer than the run at their defaults.
    class_names: the names of the classes, in label order.
    step: the checkpoint's training step.
    normalization: the per-channel (mean, std) in [0, 1] units that images
      are normalized with before the model sees them.
    members: each member's seed, learning rate and weight decay.
    weights: 'ema' if `variables` are the run's averaged weights
      (train.ema_decay), else 'raw'.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               restored: inference.Restored):
    self._restored = restored
    self.config = config
    self.model = models.from_config(config)
    self.class_names = list(restored.meta['class_names'])
    self.step = restored.step
    self.weights = restored.weights
    self.normalization = restored.normalization
    self.members = [{k: m[k] for k in ('seed', 'learning_rate', 'weight_decay')}
                    for m in restored.meta['members']]
    variables = {'params': restored.members.params,
                 'batch_stats': restored.members.batch_stats}
    if len(self.members) == 1:  # One member: plain variables, no member axis.
      variables = jax.tree.map(lambda x: x[0], variables)
    self.variables = variables

  def predict(self, images, flip: bool = False,
              batch_size: int | None = None,
              translate: int = 0) -> np.ndarray:
    """Class probabilities (N, classes) of `images`.

    Args:
      images: (N, height, width, channels) as the config's data (e.g. N x 32
        x 32 x 3), NumPy or JAX; uint8 in 0..255, or float in [0, 1].
      flip: average each image's logits with its mirror image's (the
        config's train.eval_flip, test-time augmentation).
      translate: also average views shifted by this many pixels (the
        config's train.eval_translate).
      batch_size: images per device call; default train.eval_batch_size,
        as --mode=evaluate.

    With several members, the probabilities are their average (the
    ensemble), as --mode=evaluate reports it.
    """
    images = model_input(images, self.config.data)
    if batch_size is None:
      batch_size = self.config.train.eval_batch_size
    if (isinstance(batch_size, bool) or
        not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
      raise ConfigError(f'batch_size={batch_size!r} must be an integer >= 1')
    split = data.Split(images, np.zeros(len(images), np.int32))
    _, probabilities, _ = self._restored.predict(split, int(batch_size),
                                                 bool(flip), int(translate))
    return probabilities

  def __repr__(self):
    return (f'Classifier({models.describe(self.config.model).title}, '
            f'step {self.step}, '
            f'{len(self.class_names)} classes, {len(self.members)} member(s))')


def model_input(images, data_config) -> np.ndarray:
  """`images` as the eval path takes them: uint8 as they are, float [0, 1]
  scaled to 0..255 (normalization divides by 255); DataError if unfit."""
  try:
    array = np.asarray(images)  # A JAX array comes to the host.
  except (TypeError, ValueError) as e:
    raise DataError(f'images are not an array: {e}') from None
  if array.ndim != 4:
    hint = '; one image? pass images[None]' if array.ndim == 3 else ''
    raise DataError(f'images must be (N, height, width, channels), not of '
                    f'shape {array.shape}{hint}')
  data.check_not_empty(len(array), 'images')
  data.check_shape(array.shape[1:], 'these', data_config)
  if array.dtype == np.uint8:
    return array
  if not np.issubdtype(array.dtype, np.floating):
    raise DataError(f'images must be uint8 (0..255) or float (0..1), not '
                    f'{array.dtype}')
  low, high = float(np.min(array)), float(np.max(array))
  if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= 1):
    raise DataError(f'float images must be in [0, 1], these span [{low}, '
                    f'{high}]; pass 0..255 values as uint8')
  return array.astype(np.float32) * 255


def load(path: str, checkpoint: str | int = 'best',
         member: int | None = None, weights: str = 'auto') -> Classifier:
  """A run's checkpoint, ready to predict.

  Args:
    path: a run's workdir, or a pretrained/ folder such as
      'pretrained/resnet20_conv_fast'.
    checkpoint: 'best' (validation accuracy), 'best_loss', 'latest' or a
      step number, as --checkpoint on the command line.
    member: None for every member of the run (their ensemble, as
      --mode=evaluate reports it), or the index of one member.
    weights: 'auto' (the averaged weights when the run kept an average,
      train.ema_decay, else the raw ones), 'ema' or 'raw', as --weights.

  The config is the one the checkpoint was trained with; keys added to
  the code since then take their defaults.
  """
  if member is not None and (isinstance(member, bool) or
                             not isinstance(member, (int, np.integer))):
    raise ConfigError(f'member={member!r} must be a member index (int) or '
                      'None (the ensemble of every member)')
  compile_cache.enable()  # See train_and_evaluate.
  step, config = _saved_config(path, checkpoint)
  restored = inference.restore_for_inference(
      config, path, step, None if member is None else int(member), weights)
  return Classifier(config, restored)


def _saved_config(path: str, which) -> tuple[int, ml_collections.ConfigDict]:
  """(step, config it was trained with) of checkpoint `which` of `path`."""
  manager = checkpoint.create_manager(path, read_only=True)
  try:
    step = checkpoint.select_step(manager, which)
    saved = checkpoint.read_meta(manager, step).get('config')
  finally:
    manager.close()
  if saved is None:
    raise checkpoint.CheckpointError(
        f'checkpoint {step} in {path} records no config; restore it with '
        '--mode=evaluate and its config file instead')
  return step, config_lib.with_defaults(saved)


def get_config(path_or_name: str,
               overrides: Mapping[str, Any] | None = None
               ) -> ml_collections.ConfigDict:
  """A config file's config, with `overrides` applied and validated.

  Args:
    path_or_name: a config file (any `get_config()` file), or the name of
      one in the checkout's configs/, e.g. 'resnet_conv_fast'.
    overrides: {dotted key: value}, e.g. {'train.steps': 5}, as
      --config.KEY=VALUE on the command line; an unknown key or a value of
      the wrong type is a ConfigError naming it.
  """
  config = runpy.run_path(config_file(path_or_name))['get_config']()
  for key, value in (overrides or {}).items():
    unknown = config_lib.unknown_key(config, key)
    if unknown:
      raise ConfigError(f'{unknown} (overrides of {path_or_name})')
    *parents, leaf = key.split('.')
    node = config_lib.lookup(config, '.'.join(parents)) if parents else config
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)  # As the command line parses a sequence.
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f'{key}={value!r} does not fit: {e}') from None
  config_lib.validate(config)
  return config


def config_file(path_or_name: str) -> str:
  """The path of a config file given by path, or by name in configs/."""
  if os.path.isfile(path_or_name):
    return path_or_name
  name = path_or_name[:-len('.py')] if path_or_name.endswith('.py') else (
      path_or_name)
  candidate = os.path.join(CONFIGS_DIR, f'{name}.py')
  if os.sep not in name and os.path.isfile(candidate):
    return candidate
  names = sorted(n[:-3] for n in os.listdir(CONFIGS_DIR)
                 if n.endswith('.py')) if os.path.isdir(CONFIGS_DIR) else []
  raise ConfigError(f'no config {path_or_name!r}: not a file, nor a name in '
                    f'{CONFIGS_DIR} ({", ".join(names) or "no such folder"})')


def train_and_evaluate(config: ml_collections.ConfigDict | str, workdir: str,
                       stop_at_step: int = 0, restart: bool = False) -> dict:
  """Trains `config` (a ConfigDict, or get_config's path or name) in
  `workdir`, resuming from its checkpoint if it has one, as --mode=train.

  Returns the final metrics: step, val_accuracy, val_loss, num_params and
  more (what report.md shows). stop_at_step and restart are --stop_at_step
  and --restart. In the main thread SIGTERM and SIGINT (Ctrl-C, a notebook's
  interrupt) save the current step and raise preemption.Interrupted; from
  any other thread no signal handler is installed (Python allows them only
  in the main thread), so such a run ends at its end or on an exception.
  """
  if isinstance(config, str):
    config = get_config(config)
  # As the command line does; programs this process compiled before are not
  # cached (it warns once).
  compile_cache.enable()
  return train.train_and_evaluate(config, workdir, stop_at_step, restart)
