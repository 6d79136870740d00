"""Train state, the jitted train and eval steps, and the training loop.

A run trains one or more members (config.members: seeds and swept learning
rates and weight decays) together: their train states are stacked on a
leading member axis and one jitted step vmaps the single-member `train_step`
over them. A single run is the case of one member.

Everything random is derived from (member's seed, step): the batch order
from the epoch, the augmentation from the step. A checkpoint therefore needs
only the train state to resume exactly. A dataset that fits memory lives on the
devices and each step samples its batch there; a larger one is streamed
(data/stream.py), batch by batch in the same order. What the loop reports
and its divergence policy are in progress.py; checkpoints in checkpoint.py.
"""
import functools
import itertools
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import checkpoint, cpu_conv, data, models, optim, progress
from resnet_jax import reporting
from resnet_jax import config as config_lib
from resnet_jax.data import augment, folder, stream
from resnet_jax.errors import ConfigError


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_mesh(shard_members: bool = False) -> jax.sharding.Mesh:
  """A mesh over every device, axes ('members', 'data').

  By default the batch is split along 'data' and every device holds every
  member ('members' has size 1); with `shard_members` (train.shard_members)
  the member axis is split instead and each device trains whole members.
  """
  devices = jax.device_count()
  shape = (devices, 1) if shard_members else (1, devices)
  # Auto axes: XLA propagates shardings from the constraints we place.
  return jax.make_mesh(shape, ('members', 'data'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def member_sharding(mesh) -> NamedSharding:
  """Stacked members (train state): the leading axis along 'members'."""
  return NamedSharding(mesh, P('members'))


def create_model(config):
  return models.create_model(
      config.model, dtype=jnp.dtype(config.train.dtype),
      conv_general_dilated=cpu_conv.select_conv(config.model.conv_impl))


def create_train_state(config, model, mesh) -> TrainState:
  """Each member's parameters and optimizer state, initialized from its seed
  and stacked on a leading member axis, replicated on the mesh."""
  channels = 1 if config.data.grayscale else 3
  shape = (1, config.data.image_size, config.data.image_size, channels)

  def init(seed, learning_rate, weight_decay):
    variables = model.init(jax.random.key(seed), jnp.zeros(shape), train=False)
    state = TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        batch_stats=variables['batch_stats'],
        tx=optim.create_optimizer(config.train))
    return state.replace(opt_state=optim.with_hyperparams(
        state.opt_state, learning_rate, weight_decay))

  members = config_lib.members(config)
  column = lambda key, dtype: jnp.asarray([m[key] for m in members], dtype)
  # At -O0 XLA:CPU compiles the initializers (threefry random bits) ~10x
  # faster, for a program that runs once; a few parameters differ from
  # -O2's by one float32 ulp.
  options = ({'xla_backend_optimization_level': 0}
             if jax.default_backend() == 'cpu' else None)
  return jax.jit(jax.vmap(init), out_shardings=member_sharding(mesh),
                 compiler_options=options)(
      column('seed', jnp.uint32), column('learning_rate', jnp.float32),
      column('weight_decay', jnp.float32))


def member_keys(config):
  """(order keys, augmentation keys), one per member, each drawn as a single
  run with the member's seed draws them."""
  seeds = jnp.asarray([m['seed'] for m in config_lib.members(config)],
                      jnp.uint32)
  keys = jax.vmap(lambda seed: jax.random.split(jax.random.key(seed)))(seeds)
  return keys[:, 0], keys[:, 1]


def cross_entropy(logits, labels, label_smoothing=0.0):
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state, batch, rng, *, normalization, label_smoothing,
               train_config):
  """One member's SGD step on a batch of uint8 images: augment, forward,
  backward."""
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
      'learning_rate': optim.learning_rate(state.opt_state, train_config,
                                           state.step),
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
  """Jitted (state, train_data[, active]) -> (state, metrics): every member
  samples its batch, augments and updates, vmapped over the member axis.

  `active` (members,) is False for a member frozen after diverging (with
  train.on_nonfinite=stop): its state stays, only its step advances. The
  metrics carry the next step's `active`. With `streamed`, the second
  argument is the step's batches themselves, (members, batch, ...), built
  by the host's loader (stream.TrainBatches) in the order sample_batch draws.
  """
  order_keys, augment_keys = member_keys(config)
  step_fn = functools.partial(
      train_step, normalization=normalization,
      label_smoothing=config.train.label_smoothing, train_config=config.train)
  skip = config.train.on_nonfinite == 'skip'

  def member_step(state, train_data, order_key, augment_key, active):
    if streamed:
      batch = train_data
    else:
      batch = sample_batch(train_data, state.step, order_key,
                           config.train.batch_size)
    batch = jax.lax.with_sharding_constraint(
        batch, NamedSharding(mesh, P('data')))
    new_state, metrics = step_fn(state, batch,
                                 jax.random.fold_in(augment_key, state.step))
    new_state = jax.tree.map(lambda new, old: jnp.where(active, new, old),
                             new_state, state.replace(step=state.step + 1))
    # With 'stop', a member's first non-finite step freezes it.
    metrics['active'] = active & (metrics['finite'] | skip)
    return new_state, metrics

  chunk = config.train.member_chunk

  def train_fn(state, train_data, active=None):
    if active is None:  # Every member trains.
      active = jnp.ones(len(order_keys), bool)
    if 0 < chunk < len(order_keys):
      # `chunk` members vmapped at a time, the chunks one after another.
      per_member = (state, order_keys, augment_keys, active)
      if streamed:
        per_member += (train_data,)
      def one(xs):
        data_ = xs[4] if streamed else train_data
        return member_step(xs[0], data_, *xs[1:4])
      return jax.lax.map(one, per_member, batch_size=chunk)
    # spmd_axis_name: the member axis of the batch follows the state's.
    return jax.vmap(member_step, in_axes=(0, 0 if streamed else None, 0, 0, 0),
                    spmd_axis_name='members')(
        state, train_data, order_keys, augment_keys, active)

  out_shardings = (member_sharding(mesh), NamedSharding(mesh, P()))
  return jax.jit(train_fn, donate_argnums=0, out_shardings=out_shardings,
                 compiler_options=cpu_conv.jit_compiler_options(
                     config.model.conv_impl))


def make_eval_fn(normalization, flip=False):
  """Jitted (state, eval_data) -> each member's sums (members,), scanning
  over the padded chunks."""

  def eval_fn(state, eval_data):
    def body(totals, batch):
      sums, _ = eval_step(state, batch, normalization=normalization,
                          flip=flip)
      return jax.tree.map(jnp.add, totals, sums), None
    zeros = {'loss': 0.0, 'correct': 0, 'count': 0}
    zeros = jax.tree.map(jnp.asarray, zeros)
    return jax.lax.scan(body, zeros, eval_data)[0]

  return jax.jit(jax.vmap(eval_fn, in_axes=(0, None)))


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
  return member_metrics(jax.device_get(eval_fn(state, eval_data)))


def member_metrics(sums) -> dict:
  """From each member's sums: the members' mean loss and accuracy, and the
  lists `member_loss` and `member_accuracy`."""
  count = int(np.asarray(sums['count']).reshape(-1)[0])
  losses = np.asarray(sums['loss'], np.float64).reshape(-1) / count
  accuracies = np.asarray(sums['correct'], np.float64).reshape(-1) / count
  return {'loss': float(np.mean(losses)),
          'accuracy': float(np.mean(accuracies)), 'num_examples': count,
          'member_loss': losses.tolist(),
          'member_accuracy': accuracies.tolist()}


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
  """(state, step, meta) of the newest intact checkpoint, else (state, 0,
  None).

  Unreadable checkpoints are moved aside (checkpoint.newest_intact). A
  readable one written for another architecture, optimizer or number of
  members is an error; one written before runs had members resumes as a run
  of one.
  """
  def restore(manager, step):
    meta = checkpoint.restore_meta(manager, step, config)
    checkpoint.check_members(meta, config, manager.directory, step)
    restored = (checkpoint.restore_state(manager, step, state)
                if 'members' in meta else
                restore_single_model(manager, step, state))
    return restored, meta

  found = checkpoint.newest_intact(manager, workdir, restore)
  if found is None:
    return state, 0, None
  step, (restored, meta) = found
  if jax.process_index() == 0:
    print(f'Resuming from step {step} in {manager.directory}')
  # The config's learning rates and weight decays apply from here on.
  hyperparams = state.opt_state.hyperparams
  state = restored.replace(opt_state=optim.with_hyperparams(
      restored.opt_state, hyperparams['learning_rate'],
      hyperparams['weight_decay']))
  return state, step, meta


def restore_single_model(manager, step: int, state):
  """`state` (one member) from a checkpoint written before runs had members:
  no member axis, and an optimizer state without the injected
  hyperparameters. The config's learning rate and weight decay fill those."""
  mesh = jax.tree.leaves(state.params)[0].sharding.mesh
  replicated = NamedSharding(mesh, P())
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=replicated),
      state.replace(opt_state=state.opt_state.inner_state))
  saved = checkpoint.restore_state(manager, step, target)

  def add_member_axis(saved, state):
    stack = lambda tree: jax.tree.map(lambda x: x[None], tree)
    opt_state = state.opt_state._replace(
        count=jnp.full_like(state.opt_state.count, saved.step),
        inner_state=stack(saved.opt_state))
    return state.replace(step=stack(saved.step), params=stack(saved.params),
                         batch_stats=stack(saved.batch_stats),
                         opt_state=opt_state)

  return jax.jit(add_member_axis, out_shardings=member_sharding(mesh))(
      saved, state)


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
    run_eval = lambda state: member_metrics(stream.evaluate(
        eval_fn, state, splits['val'], batch_size, mesh))
  return train_inputs, train_fn, run_eval


def check_mesh(config, mesh):
  """The batch splits over 'data', the members over 'members'."""
  data_devices, num_members = mesh.shape['data'], len(config_lib.members(config))
  if config.train.batch_size % data_devices:
    raise ConfigError(f'train.batch_size={config.train.batch_size} must be a '
                      f'multiple of the {data_devices} devices')
  if not config.train.shard_members:
    return
  if num_members % mesh.shape['members']:
    raise ConfigError(f'train.shard_members needs a multiple of the '
                      f'{mesh.shape["members"]} devices as members, not '
                      f'{num_members}')
  if jax.process_count() > 1:  # Each process loads a slice of every batch.
    raise ConfigError('train.shard_members works with one process only')


def train_and_evaluate(config, workdir: str, stop_at_step: int = 0,
                       restart: bool = False) -> dict:
  """Trains (or resumes) in `workdir`; returns the last validation metrics.

  `stop_at_step` > 0 ends the run early at that step with a checkpoint, as a
  time-limited job would; the same command later continues from there.
  `restart` archives what the workdir holds and starts from step 0.
  """
  run_start = time.perf_counter()
  config_lib.validate(config)
  mesh = create_mesh(config.train.shard_members)
  check_mesh(config, mesh)
  streamed = stream.should_stream(config)
  splits, normalization = load_train_val(config, streamed)
  class_names = data.class_names(config)
  model = create_model(config)
  state = create_train_state(config, model, mesh)

  if restart and os.path.isdir(workdir):
    print(f'--restart: moved the previous run to {archive_previous_run(workdir)}')
  manager = checkpoint.create_manager(workdir)
  meta = checkpoint.make_meta(config, normalization, class_names)
  state, start, restored = restore_or_init(manager, config, state, workdir)
  active = np.array([not m.get('frozen', False)
                     for m in checkpoint.members(restored or meta)])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  train_inputs, train_fn, run_eval = make_inputs(
      config, splits, normalization, start, mesh, streamed)
  log = progress.ProgressLog(
      config, reporting.Reporter(workdir, config, start), start,
      len(splits['train']) // config.train.batch_size, active)
  active = put_replicated({'active': active}, mesh)['active']
  # Each save records which members are frozen (diverged, 'stop').
  meta_now = lambda: checkpoint.with_frozen(meta, ~np.asarray(
      jax.device_get(active)))

  end = min(config.train.steps, stop_at_step or config.train.steps)
  pending, val, saved_step = [], {}, start
  try:
    with StopSignals() as signals:
      for step in range(start + 1, end + 1):
        state, metrics = train_fn(state, next(train_inputs), active)
        active = metrics['active']
        pending.append(metrics)
        log_now = step % config.train.log_every == 0 or step == end
        if log_now:
          log.train(step, pending)
          pending = []
        if step % config.train.eval_every == 0 or step == end:
          val = run_eval(state)
          finite = progress.check_validation(
              val, step, config.train.on_nonfinite, log.members)
          if config.train.on_nonfinite == 'stop' and not finite.all():
            frozen = np.asarray(jax.device_get(active)) & finite
            active = put_replicated({'active': frozen}, mesh)['active']
          log.validation(step, val)
          # A non-finite validation loss must not rank as a best checkpoint.
          checkpoint.save(manager, step, state, meta_now(),
                          metrics=progress.ranking_metrics(val, finite))
          saved_step = step
        # Processes agree on stopping at log steps; alone, one stops at once.
        signum = (signals.any_process_stopping()
                  if log_now or jax.process_count() == 1 else 0)
        if signum and step < end:
          if saved_step != step:
            checkpoint.save(manager, step, state, meta_now())
          raise Interrupted(signum, step, manager.directory)
  finally:  # Whatever stops the loop, pending saves complete.
    log.close()
    if streamed:
      train_inputs.close()
    checkpoint.wait_until_saved(manager)
    manager.close()
  summary = {'step': end, 'val_accuracy': val.get('accuracy'),
             'val_loss': val.get('loss'), 'images_per_sec': log.images_per_sec,
             # Of one member.
             'num_params': sum(p[0].size for p in jax.tree.leaves(state.params)),
             'members': [{**m, 'val_accuracy': a,
                          'val_loss': progress.finite_or_none(l),
                          'frozen': not alive}
                         for m, a, l, alive in zip(
                             log.members, val.get('member_accuracy', []),
                             val.get('member_loss', []),
                             np.asarray(jax.device_get(active)))],
             'wall_time_s': time.perf_counter() - run_start}
  log.reporter.finish(summary)
  return summary
