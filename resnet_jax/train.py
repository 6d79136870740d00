"""The jitted train step and the training loop.

A run trains one or more members (config.members: seeds and swept learning
rates and weight decays) together: their train states (train_state.py) are
stacked on a leading member axis and one jitted step vmaps the single-member
`train_step` over them. A single run is the case of one member.

Everything random is derived from (member's seed, step): the batch order
from the epoch, the augmentation from the step. A checkpoint therefore needs
only the train state to resume exactly. A dataset that fits memory lives on the
devices and each step samples its batch there; a larger one is streamed
(data/stream.py), batch by batch in the same order. Validation is
inference.py's; what the loop reports and its divergence policy are in
progress.py; stopping on a signal in preemption.py; checkpoints, restore
included, in checkpoint.py.
"""
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import checkpoint, cpu_conv, data, inference, models, optim
from resnet_jax import mesh as mesh_lib
from resnet_jax import pacing, preemption, profiling, progress, reporting
from resnet_jax import train_state
from resnet_jax import workdir as workdir_lib
from resnet_jax import config as config_lib
from resnet_jax.data import augment, folder, order, stream
from resnet_jax.errors import ConfigError
from resnet_jax.mesh import create_mesh, member_sharding, put_replicated


def train_step(state, batch, rng, *, normalization, label_smoothing,
               train_config, augmentation=augment.Augmentation()):
  """One member's SGD step on a batch of uint8 images: augment, forward,
  backward; then, with train.ema_decay, the weights' average."""
  images, targets = augmentation(rng, batch['image'], batch['label'],
                                 normalization)
  # Its own stream, so the augmentation's draws do not change with dropout.
  dropout_rng = jax.random.fold_in(rng, augment.DROPOUT_KEY)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'], rngs={'dropout': dropout_rng})
    loss = inference.cross_entropy(logits, targets, label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, batch_stats)), grads = grad_fn(state.params)
  updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if isinstance(state, train_state.AveragedTrainState):
    updated = updated.replace(ema=train_state.update_ema(
        state.ema, updated.params, updated.batch_stats,
        train_state.ema_decay(train_config.ema_decay, state.step)))
  # Overflow can show in the loss, the gradients, or only after the update.
  finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
      (loss, grads, updated.params, updated.batch_stats))]))
  # A non-finite step only advances the step (and so the data order).
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                           updated, state.replace(step=state.step + 1))
  metrics = {
      'finite': finite,
      'loss': loss,
      # Mixed targets: against the dominant label (docs/training.md).
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == (
          jnp.argmax(targets, -1) if augmentation.mixing else batch['label'])),
      'learning_rate': optim.learning_rate(state.opt_state, train_config,
                                           state.step),
  }
  return new_state, metrics


def make_train_fn(config, mesh, normalization, streamed=False):
  """Jitted (state, inputs[, active]) -> (state, metrics): every member
  samples its batch, augments and updates, vmapped over the member axis
  (train.member_chunk members at a time, if set).

  In memory, `inputs` is an item of order.EpochOrders: the training set and each
  member's permutation of the epoch.
  `active` (members,) is False for a member frozen after diverging (with
  train.on_nonfinite=stop): its state stays, only its step advances. The
  metrics carry the next step's `active`. With `streamed`, `inputs` is the
  step's batches themselves, (members, batch, ...), built
  by the host's loader (stream.TrainBatches) in order.sample_batch's order.
  """
  _, augment_keys = order.member_keys(config)
  step_fn = functools.partial(
      train_step, normalization=normalization,
      label_smoothing=config.train.label_smoothing, train_config=config.train,
      augmentation=augment.Augmentation.from_config(config))
  skip = config.train.on_nonfinite == 'skip'

  def member_step(state, inputs, augment_key, active):
    if streamed:
      batch = inputs
    else:
      batch = order.sample_batch(inputs['data'], inputs['order'], state.step,
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

  num_members = len(augment_keys)
  compiler_options = cpu_conv.jit_compiler_options(config.model.conv_impl)
  out_shardings = (member_sharding(mesh), NamedSharding(mesh, P()))

  # Streamed batches and in-memory orders have a member axis; the in-memory
  # training set is shared.
  input_axes = 0 if streamed else {'data': None, 'order': 0}

  def step_members(state, inputs, augment_keys, active):
    # spmd_axis_name: the member axis of the batch follows the state's.
    return jax.vmap(member_step, in_axes=(0, input_axes, 0, 0),
                    spmd_axis_name='members')(
        state, inputs, augment_keys, active)

  def train_fn(state, inputs, active=None):
    if active is None:  # Every member trains.
      active = jnp.ones(num_members, bool)
    return step_members(state, inputs, augment_keys, active)

  chunk = config.train.member_chunk or member_chunk_auto(config)
  if not 0 < chunk < num_members:
    return jax.jit(train_fn, donate_argnums=0, out_shardings=out_shardings,
                   compiler_options=compiler_options)

  # train.member_chunk: `chunk` members vmapped at a time, one jitted call per
  # chunk, issued in turn from the host. Inside one program, XLA:CPU runs a
  # lax.map over members ~17x slower per member than a step of one, and
  # compiles an unrolled loop for minutes (docs/training.md).
  @functools.partial(jax.jit, static_argnums=4,
                     compiler_options=compiler_options)
  def chunk_step(state, inputs, active, start, size):
    take = lambda tree: jax.tree.map(
        lambda x: jax.lax.dynamic_slice_in_dim(x, start, size), tree)
    inputs = take(inputs) if streamed else {**inputs,
                                            'order': take(inputs['order'])}
    return step_members(take(state), inputs, take(augment_keys), take(active))

  concatenate = jax.jit(
      lambda parts: jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts),
      out_shardings=out_shardings)

  def chunked_train_fn(state, inputs, active=None):
    if active is None:
      active = jnp.ones(num_members, bool)
    return concatenate([
        chunk_step(state, inputs, active, start,
                   min(chunk, num_members - start))
        for start in range(0, num_members, chunk)])

  return chunked_train_fn


def member_chunk_auto(config) -> int:
  """train.member_chunk=0: one member at a time on the CPU backend, where a
  vmapped step runs grouped convolutions slowly; all at once elsewhere."""
  on_cpu = jax.default_backend() == 'cpu'
  return 1 if on_cpu and not config.train.shard_members else 0


def load_train_val(config, streamed: bool):
  """(splits, normalization) of 'train' and 'val' ('train' alone with
  data.val_fraction=0).

  In memory: data.Split arrays. Streamed: stream.StreamedSplit readers, but
  a validation split that fits data.max_in_memory_gb is decoded into memory
  (it is evaluated many times); the statistics then come from a sample.
  """
  names = data.training_splits(config.data)
  if streamed:
    splits = {name: stream.open_split(config, name) for name in names}
  else:
    splits = data.load_splits(config, names)
  if len(splits['train']) < config.train.batch_size:
    raise ConfigError(f'train.batch_size={config.train.batch_size} exceeds '
                      f'the {len(splits["train"])} training examples')
  if not streamed:
    return splits, data.channel_stats(splits['train'].images)
  if 'val' in splits and folder.fits_in_memory(len(splits['val']), config.data):
    splits['val'] = splits['val'].load()
  return splits, stream.channel_stats(splits['train'])


def make_inputs(config, splits, normalization, start: int, mesh, streamed):
  """(train_inputs, train_fn, run_eval) for in-memory or streamed splits.

  The loop calls train_fn(state, next(train_inputs)) each step: the whole
  dataset on the devices and the epoch's orders (train_fn samples the
  batch), or the step's streamed batch. run_eval(state) gives the
  validation metrics (None without a validation split): those of the raw
  weights, and with train.ema_decay those of the averaged ones under 'ema'
  and train.rank_by under 'rank_by'.
  """
  if streamed:
    train_inputs = stream.TrainBatches(splits['train'], config, start, mesh)
  else:
    train_inputs = order.EpochOrders(
        put_replicated({'image': splits['train'].images,
                        'label': splits['train'].labels}, mesh),
        order.member_keys(config)[0], config.train.batch_size, start,
        member_sharding(mesh))
  train_fn = make_train_fn(config, mesh, normalization, streamed)
  if 'val' not in splits:
    return train_inputs, train_fn, None
  eval_fn = inference.make_eval_fn(normalization, mesh,
                                   **inference.views(config.train))
  # In memory, the validation chunks go to the devices once, for every
  # evaluation; streamed, they are decoded again each time.
  val_chunks = inference.chunks(splits['val'], config.train.eval_batch_size,
                                mesh)

  def evaluate(members):
    return inference.metrics(inference.run(
        eval_fn, members, val_chunks, keep_probabilities=False)[0])

  def run_eval(state):
    val = evaluate(inference.members_of(state, 'raw'))
    if config.train.ema_decay:  # The averaged weights too; which one ranks.
      val['ema'] = evaluate(inference.members_of(state, 'ema'))
      val['rank_by'] = config.train.rank_by
    return val

  return train_inputs, train_fn, run_eval


def train_and_evaluate(config, workdir: str, stop_at_step: int = 0,
                       restart: bool = False) -> dict:
  """Trains (or resumes) in `workdir`; returns the last validation metrics.

  `stop_at_step` > 0 ends the run early at that step with a checkpoint, as a
  time-limited job would; the same command later continues from there.
  `restart` archives what the workdir holds and starts from step 0.
  Another run training in `workdir` is refused (workdir.RunLock) at once.
  SIGTERM/SIGINT save and stop the run (preemption.py), in the main thread
  only: from another thread no signal handler is installed.
  """
  config_lib.validate(config)
  with workdir_lib.RunLock(workdir):  # Before the data and the compiling.
    return _train_and_evaluate(config, workdir, stop_at_step, restart)


def _train_and_evaluate(config, workdir, stop_at_step, restart):
  mesh_lib.announce_runtime()  # The run's first line: what it trains on.
  run_start = time.perf_counter()
  mesh = create_mesh(config.train.shard_members)
  mesh_lib.check(config, mesh)
  streamed = stream.should_stream(config)
  splits, normalization = load_train_val(config, streamed)
  class_names = data.class_names(config)
  model = models.from_config(config)
  state = train_state.create_train_state(config, model, mesh)

  if restart and (archive := checkpoint.archive_previous_run(workdir)):
    print(f'--restart: moved the previous run to {archive}')
  manager = checkpoint.create_manager(workdir)
  meta = checkpoint.make_meta(config, normalization, class_names)
  state, start, restored = checkpoint.restore_or_init(manager, config, state,
                                                      workdir)
  active = np.array([not m.get('frozen', False)
                     for m in (restored or meta)['members']])
  if jax.process_index() == 0:
    workdir_lib.write_text(os.path.join(workdir, 'config.json'),
                           config.to_json_best_effort(indent=2))
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
  profile = profiling.Profile(config.train.get('profile_steps'), workdir,
                              start)
  try:
    with preemption.StopSignals() as signals:

      def step_done(step, seconds):
        log.step_done(step, seconds)
        signals.last_done = step

      pacer = pacing.Pacer(step_done)
      for step in range(start + 1, end + 1):
        profile.before(step, pacer)
        state, metrics = train_fn(state, next(train_inputs), active)
        active = metrics['active']
        pending.append(metrics)
        log_now = step % config.train.log_every == 0 or step == end
        if log_now:
          log.train(step, pending)
          pending = []
        pacer.dispatched(step, active)
        profile.after(step, pacer)
        if run_eval is None and (step % config.train.eval_every == 0
                                 or step == end):
          pacer.drain()  # No validation (data.val_fraction=0): a save alone.
          checkpoint.save(manager, step, state, meta_now())
          saved_step = step
          pacer.paused()
        elif step % config.train.eval_every == 0 or step == end:
          pacer.drain()  # A diverged member must be known before the save.
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
          pacer.paused()
        signum = signals.stop_requested(step, log_now)
        if signum and step < end:
          pacer.drain()
          if saved_step != step:
            checkpoint.save(manager, step, state, meta_now())
          raise preemption.Interrupted(signum, step, manager.directory,
                                       signals.steps_after(step))
  finally:  # Whatever stops the loop, pending saves complete.
    profile.stop()
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
                          'val_loss': None if l is None else
                                      progress.finite_or_none(l),
                          'frozen': not alive}
                         for m, a, l, alive in zip(
                             log.members, val.get('member_accuracy',
                                                  [None] * len(log.members)),
                             val.get('member_loss', [None] * len(log.members)),
                             np.asarray(jax.device_get(active)))],
             'wall_time_s': time.perf_counter() - run_start}
  log.reporter.finish(summary)
  return summary
