"""Train state, the jitted train and eval steps, and the training loop.

Everything random is derived from (seed, step): the batch order from the
epoch, the augmentation from the step. A checkpoint therefore needs only the
train state to resume exactly. A dataset that fits memory lives on the
devices and each step samples its batch there; a larger one is streamed
(data/stream.py), batch by batch in the same order.
"""
import functools
import itertools
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from resnet_jax import checkpoint, cpu_conv, data, models, optim, reporting
from resnet_jax import config as config_lib
from resnet_jax.data import augment, folder, stream
from resnet_jax.errors import ConfigError, UserError


class TrainingDiverged(UserError):
  """A non-finite loss or gradient, with train.on_nonfinite=stop."""


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device: the batch is split along 'data'."""
  # Auto axes: XLA propagates shardings from the constraints we place.
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def create_model(config):
  return models.create_model(
      config.model, dtype=jnp.dtype(config.train.dtype),
      conv_general_dilated=cpu_conv.select_conv(config.model.conv_impl))


def create_train_state(config, model, rng, mesh) -> TrainState:
  """Initializes parameters and optimizer state, replicated on the mesh."""
  channels = 1 if config.data.grayscale else 3
  shape = (1, config.data.image_size, config.data.image_size, channels)

  def init():
    variables = model.init(rng, jnp.zeros(shape), train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        batch_stats=variables['batch_stats'],
        tx=optim.create_optimizer(config.train))

  return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def cross_entropy(logits, labels, label_smoothing=0.0):
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state, batch, rng, *, normalization, label_smoothing,
               learning_rate_fn):
  """One SGD step on a batch of uint8 images: augment, forward, backward."""
  images = augment.random_crop_flip(rng, batch['image'])
  images = augment.normalize(images, *normalization)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'])
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, batch_stats)), grads = grad_fn(state.params)
  updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  # Overflow can show in the loss, the gradients, or only after the update.
  finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
      (loss, grads, updated.params, updated.batch_stats))]))
  # A non-finite step only advances the step (and so the data order).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           updated, state.replace(step=state.step + 1))
  metrics = {
      'finite': finite,
      'loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
      'learning_rate': learning_rate_fn(state.step),
  }
  return new_state, metrics


def eval_step(state, batch, *, normalization, flip=False):
  """(sums of loss and correct predictions over the unmasked examples, logits).

  With `flip`, the logits are the mean of the image's and its mirror's.
  """
  images = augment.normalize(batch['image'], *normalization)
  forward = lambda images: state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats}, images,
      train=False)
  logits = forward(images)
  if flip:
    logits = (logits + forward(images[:, :, ::-1])) / 2
  loss = cross_entropy(logits, batch['label'])
  correct = jnp.argmax(logits, -1) == batch['label']
  mask = batch['mask']
  sums = {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}
  return sums, logits


def sample_batch(train_data, step, order_key, batch_size):
  """Batch `step` of a fresh permutation per epoch; the remainder is dropped."""
  num_examples = train_data['label'].shape[0]
  epoch, index = jnp.divmod(step, num_examples // batch_size)
  order = jax.random.permutation(jax.random.fold_in(order_key, epoch),
                                 num_examples)
  indices = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
  return jax.tree.map(lambda x: x[indices], train_data)


def make_train_fn(config, mesh, normalization, streamed=False):
  """Jitted (state, train_data) -> (state, metrics): sample, augment, update.

  With `streamed`, the second argument is the step's batch itself, built by
  the host's loader (stream.TrainBatches) in the order sample_batch draws.
  """
  order_key, augment_key = jax.random.split(jax.random.key(config.seed))
  step_fn = functools.partial(
      train_step, normalization=normalization,
      label_smoothing=config.train.label_smoothing,
      learning_rate_fn=optim.create_schedule(config.train))

  def train_fn(state, train_data):
    if streamed:
      batch = train_data
    else:
      batch = sample_batch(train_data, state.step, order_key,
                           config.train.batch_size)
    batch = jax.lax.with_sharding_constraint(
        batch, NamedSharding(mesh, P('data')))
    return step_fn(state, batch, jax.random.fold_in(augment_key, state.step))

  replicated = NamedSharding(mesh, P())
  return jax.jit(train_fn, donate_argnums=0, out_shardings=replicated,
                 compiler_options=cpu_conv.jit_compiler_options(
                     config.model.conv_impl))


def make_eval_fn(normalization, flip=False):
  """Jitted (state, eval_data) -> sums, scanning over the padded chunks."""

  def eval_fn(state, eval_data):
    def body(totals, batch):
      sums, _ = eval_step(state, batch, normalization=normalization,
                          flip=flip)
      return jax.tree.map(jnp.add, totals, sums), None
    zeros = {'loss': 0.0, 'correct': 0, 'count': 0}
    zeros = jax.tree.map(jnp.asarray, zeros)
    return jax.lax.scan(body, zeros, eval_data)[0]

  return jax.jit(eval_fn)


def put_replicated(arrays: dict, mesh):
  """Host arrays to every device (each process holds the whole array)."""
  sharding = NamedSharding(mesh, P())
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
          for k, v in arrays.items()}


def put_eval_chunks(split: data.Split, batch_size: int, mesh):
  """Pads a split to whole batches, (chunks, batch, ...), batch-sharded.

  Padding is masked out, so every example counts exactly once.
  """
  num_devices = mesh.devices.size
  batch_size = min(batch_size, len(split))
  batch_size = math.ceil(batch_size / num_devices) * num_devices
  chunks = math.ceil(len(split) / batch_size)
  arrays = data.padded(split, chunks * batch_size)
  sharding = NamedSharding(mesh, P(None, 'data'))
  out = {}
  for k, v in arrays.items():
    v = v.reshape(chunks, batch_size, *v.shape[1:])
    out[k] = jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
  return out


def evaluate(eval_fn, state, eval_data) -> dict:
  sums = jax.device_get(eval_fn(state, eval_data))
  count = int(sums['count'])
  return {'loss': float(sums['loss']) / count,
          'accuracy': float(sums['correct']) / count, 'num_examples': count}


class Interrupted(Exception):
  """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum = signum
    super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}; '
                     f'checkpoint saved in {directory}; rerun the same command '
                     'to resume')


class StopSignals:
  """Turns SIGTERM/SIGINT (preemption, Ctrl-C) into a flag the loop polls."""

  def __enter__(self):
    self.signum = 0
    self._previous = {s: signal.signal(s, self._handle)
                      for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def any_process_stopping(self) -> int:
    """The signal if this or any other process got one (a collective)."""
    if jax.process_count() == 1:
      return self.signum
    return int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))


def restore_or_init(manager, config, state, workdir):
  """Resumes from the newest intact checkpoint, else starts at step 0.

  An unreadable checkpoint (a kill during a save, a truncated file) is moved
  to WORKDIR/corrupt_checkpoints/ with a warning, never deleted. A readable
  one written for another architecture or optimizer is an error.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      checkpoint.restore_meta(manager, step, config)
      state = checkpoint.restore_state(manager, step, state)
    except checkpoint.CorruptCheckpointError as e:
      moved = checkpoint.quarantine(manager, step, workdir)
      print(f'warning: skipping checkpoint {step} ({e}); moved it to {moved}',
            file=sys.stderr)
      continue
    if jax.process_index() == 0:
      print(f'Resuming from step {step} in {manager.directory}')
    return state, step
  return state, 0


def check_finite(fetched, first_step, on_nonfinite):
  """Stops the run at the first non-finite step, unless told to skip those."""
  bad = [first_step + i for i, m in enumerate(fetched) if not m['finite']]
  if bad and on_nonfinite == 'stop':
    raise TrainingDiverged(
        f'non-finite loss or gradient at step {bad[0]}; the update was not '
        'applied and the last good checkpoint is kept (lower '
        'train.learning_rate, or set train.on_nonfinite=skip)')
  if bad:
    print(f'warning: skipped non-finite steps {bad}', file=sys.stderr)
  return len(bad)


def archive_previous_run(workdir: str) -> str:
  """Moves a workdir's contents to WORKDIR/archive-TIME/: a fresh start that
  deletes nothing."""
  names = [n for n in os.listdir(workdir) if not n.startswith('archive-')]
  target = os.path.join(workdir, f'archive-{time.strftime("%Y%m%d-%H%M%S")}')
  if jax.process_index() == 0 and names:
    os.makedirs(target)
    for name in names:
      os.rename(os.path.join(workdir, name), os.path.join(target, name))
  checkpoint.multihost_sync('archive')
  return target


def load_train_val(config, streamed: bool):
  """(splits, normalization) of 'train' and 'val'.

  In memory: data.Split arrays. Streamed: stream.StreamedSplit readers, but
  a validation split that fits data.max_in_memory_gb is decoded into memory
  (it is evaluated many times); the statistics then come from a sample.
  """
  if streamed:
    splits = {name: stream.open_split(config, name) for name in ('train', 'val')}
  else:
    splits = data.load_splits(config, ('train', 'val'))
  if len(splits['train']) < config.train.batch_size:
    raise ConfigError(f'train.batch_size={config.train.batch_size} exceeds '
                      f'the {len(splits["train"])} training examples')
  if not streamed:
    return splits, data.channel_stats(splits['train'].images)
  if folder.fits_in_memory(len(splits['val']), config.data):
    splits['val'] = splits['val'].load()
  return splits, stream.channel_stats(splits['train'])


class ProgressLog:
  """Train metrics every train.log_every steps and validation metrics, to the
  reporter (files, TensorBoard, plots) and the progress bar (process 0)."""

  def __init__(self, config, reporter, start: int, steps_per_epoch: int):
    self.config, self.reporter = config, reporter
    self.steps_per_epoch = steps_per_epoch
    self.bar = tqdm(total=config.train.steps, initial=start, unit='step',
                    dynamic_ncols=True, disable=jax.process_index() != 0)
    self.last_log, self.images_per_sec, self.skipped = None, None, 0

  def train(self, step: int, pending: list):
    """Fetches the metrics of the steps up to `step` and records their mean."""
    fetched = jax.device_get(pending)
    self.skipped += check_finite(fetched, step - len(fetched) + 1,
                                 self.config.train.on_nonfinite)
    now = time.perf_counter()
    if self.last_log is not None:  # The first interval includes compilation.
      self.images_per_sec = (len(fetched) * self.config.train.batch_size
                             / (now - self.last_log))
    self.last_log = now
    record = {k: float(np.mean([m[k] for m in fetched]))
              for k in ('loss', 'accuracy')}
    record['learning_rate'] = float(fetched[-1]['learning_rate'])
    self.reporter.write({'step': step, 'epoch': step / self.steps_per_epoch,
                         **{f'train_{k}': v for k, v in record.items()},
                         'images_per_sec': self.images_per_sec,
                         'skipped_steps': self.skipped})
    self.bar.set_postfix(loss=f'{record["loss"]:.3f}',
                         acc=f'{record["accuracy"]:.3f}',
                         lr=f'{record["learning_rate"]:.4f}',
                         img_s=f'{self.images_per_sec or 0:.0f}')
    self.bar.update(step - self.bar.n)

  def validation(self, step: int, val: dict):
    self.reporter.write({'step': step, 'epoch': step / self.steps_per_epoch,
                         'val_loss': val['loss'],
                         'val_accuracy': val['accuracy']})
    self.reporter.evaluated()
    if jax.process_index() == 0:
      self.bar.write(f'step {step}: val_loss {val["loss"]:.4f} '
                     f'val_accuracy {val["accuracy"]:.4f}')
    self.last_log = time.perf_counter()  # Evaluation time is not training time.

  def close(self):
    self.bar.close()


def check_validation(val: dict, step: int, on_nonfinite: str) -> bool:
  """Whether the validation loss is finite; stops the run if not (stop)."""
  finite = bool(np.isfinite(val['loss']))
  if not finite and on_nonfinite == 'stop':
    raise TrainingDiverged(
        f'non-finite validation loss at step {step}; not saved, the last good '
        'checkpoint is kept (lower train.learning_rate, or set '
        'train.on_nonfinite=skip)')
  return finite


def make_inputs(config, splits, normalization, start: int, mesh, streamed):
  """(train_inputs, train_fn, run_eval) for in-memory or streamed splits.

  The loop calls train_fn(state, next(train_inputs)) each step: the whole
  dataset on the devices (train_fn samples the batch), or the step's streamed
  batch. run_eval(state) gives the validation metrics.
  """
  if streamed:
    train_inputs = stream.TrainBatches(splits['train'], config, start, mesh)
  else:
    train_inputs = itertools.repeat(put_replicated(
        {'image': splits['train'].images, 'label': splits['train'].labels},
        mesh))
  train_fn = make_train_fn(config, mesh, normalization, streamed)
  eval_fn = make_eval_fn(normalization, config.train.eval_flip)
  batch_size = config.train.eval_batch_size
  if isinstance(splits['val'], data.Split):
    val_data = put_eval_chunks(splits['val'], batch_size, mesh)
    run_eval = lambda state: evaluate(eval_fn, state, val_data)
  else:
    run_eval = lambda state: stream.evaluate(eval_fn, state, splits['val'],
                                             batch_size, mesh)
  return train_inputs, train_fn, run_eval


def train_and_evaluate(config, workdir: str, stop_at_step: int = 0,
                       restart: bool = False) -> dict:
  """Trains (or resumes) in `workdir`; returns the last validation metrics.

  `stop_at_step` > 0 ends the run early at that step with a checkpoint, as a
  time-limited job would; the same command later continues from there.
  `restart` archives what the workdir holds and starts from step 0.
  """
  run_start = time.perf_counter()
  config_lib.validate(config)
  mesh = create_mesh()
  if config.train.batch_size % mesh.devices.size:
    raise ConfigError(f'train.batch_size={config.train.batch_size} must be a '
                      f'multiple of the {mesh.devices.size} devices')
  streamed = stream.should_stream(config)
  splits, normalization = load_train_val(config, streamed)
  class_names = data.class_names(config)
  model = create_model(config)
  state = create_train_state(config, model, jax.random.key(config.seed), mesh)

  if restart and os.path.isdir(workdir):
    print(f'--restart: moved the previous run to {archive_previous_run(workdir)}')
  manager = checkpoint.create_manager(workdir)
  meta = checkpoint.make_meta(config, normalization, class_names)
  state, start = restore_or_init(manager, config, state, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  train_inputs, train_fn, run_eval = make_inputs(
      config, splits, normalization, start, mesh, streamed)
  log = ProgressLog(config, reporting.Reporter(workdir, config, start), start,
                    len(splits['train']) // config.train.batch_size)

  end = min(config.train.steps, stop_at_step or config.train.steps)
  pending, val, saved_step = [], {}, start
  try:
    with StopSignals() as signals:
      for step in range(start + 1, end + 1):
        state, metrics = train_fn(state, next(train_inputs))
        pending.append(metrics)
        log_now = step % config.train.log_every == 0 or step == end
        if log_now:
          log.train(step, pending)
          pending = []
        if step % config.train.eval_every == 0 or step == end:
          val = run_eval(state)
          finite = check_validation(val, step, config.train.on_nonfinite)
          log.validation(step, val)
          # A non-finite validation loss must not rank as a best checkpoint.
          checkpoint.save(manager, step, state, meta, metrics={
              'val_accuracy': val['accuracy'], 'val_loss': val['loss']}
                          if finite else None)
          saved_step = step
        # Processes agree on stopping at log steps; alone, one stops at once.
        signum = (signals.any_process_stopping()
                  if log_now or jax.process_count() == 1 else 0)
        if signum and step < end:
          if saved_step != step:
            checkpoint.save(manager, step, state, meta)
          raise Interrupted(signum, step, manager.directory)
  finally:  # Whatever stops the loop, pending saves complete.
    log.close()
    if streamed:
      train_inputs.close()
    manager.wait_until_finished()
    manager.close()
  summary = {'step': end, 'val_accuracy': val.get('accuracy'),
             'val_loss': val.get('loss'), 'images_per_sec': log.images_per_sec,
             'num_params': sum(p.size for p in jax.tree.leaves(state.params)),
             'wall_time_s': time.perf_counter() - run_start}
  log.reporter.finish(summary)
  return summary
