"""Orbax checkpoints in WORKDIR/checkpoints, each with a JSON record of the
architecture, normalization, class names and members (seed, learning rate,
weight decay, frozen) it was trained with.

What the folder keeps: after any save has completed, it holds the latest
step, a step with the best mean validation accuracy and one with the lowest
mean validation loss among every evaluated save ever made in that workdir,
by any process, unless a newer save beat them (tests/test_retention.py). A
save that fails or is killed leaves every earlier checkpoint readable, and
the run ends with one error line (SaveError). An unreadable step found on
resume is moved to WORKDIR/corrupt_checkpoints/, never deleted.

The train state holds every member, stacked on a leading axis. A
checkpoint written before runs had members (no 'members' in its record) is
refused with one error line; the shipped ones were re-saved.
"""
import os
import re
import sys
import time

from absl import logging as absl_logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from resnet_jax import config as config_lib
from resnet_jax import optim
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import CheckpointError

SELECTIONS = ('best', 'best_loss', 'latest')
# Orbax warns on every read-only manager, which inference asks for on
# purpose: noise in a notebook (the command line shows errors only).
absl_logging.get_absl_logger().addFilter(
    lambda record: 'Given directory is read only' not in str(record.msg))


class CorruptCheckpointError(CheckpointError):
  """A checkpoint's files are missing or unreadable."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, 'checkpoints'))


def create_manager(workdir: str, read_only: bool = False):
  """Opens (or, unless read_only, creates) the workdir's checkpoint manager."""
  directory = checkpoint_dir(workdir)
  if read_only and not os.path.isdir(directory):
    raise CheckpointError(f'no checkpoint in {workdir}: {directory} does not exist')
  keep = policies.AnyPreservationPolicy([
      policies.LatestN(n=1),
      policies.BestN(get_metric_fn=lambda m: m['val_accuracy'], n=1,
                     keep_checkpoints_without_metrics=False),
      policies.BestN(get_metric_fn=lambda m: -m['val_loss'], n=1,
                     keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=None if read_only else keep, read_only=read_only,
      # Orbax writes the metrics (which BestN reads) only when best_fn is set.
      best_fn=lambda m: m['val_accuracy'], best_mode='max',
      create=not read_only, save_interval_steps=0 if read_only else 1)
  handlers = {'state': ocp.PyTreeCheckpointHandler(),
              'meta': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, item_handlers=handlers,
                               options=options)


def make_meta(config, normalization, class_names) -> dict:
  return {
      'architecture': architecture(config),
      'normalization': {'mean': list(normalization[0]),
                        'std': list(normalization[1])},
      'class_names': list(class_names),
      'config': config.to_dict(),
      'members': [{**m, 'frozen': False} for m in config_lib.members(config)],
  }


def with_frozen(meta: dict, frozen) -> dict:
  """`meta` with each member's 'frozen' (diverged with on_nonfinite=stop)."""
  return {**meta, 'members': [{**m, 'frozen': bool(f)}
                              for m, f in zip(meta['members'], frozen)]}


def check_members(meta: dict, config, directory: str, step: int):
  """Refuses to resume a checkpoint written for another number of members.

  Their learning rates and weight decays, like every optimizer setting, may
  change on resume: the config's apply from there on.
  """
  saved, expected = len(meta['members']), len(config_lib.members(config))
  if saved != expected:
    raise CheckpointError(
        f'checkpoint {step} in {directory} holds {saved} member(s), the '
        f'config asks for {expected} (train.num_seeds, train.sweep_*); rerun '
        'with --restart to start over')


def architecture(config) -> dict:
  return {k: config_lib.lookup(config, k) for k in config_lib.ARCHITECTURE_KEYS}


class SaveError(CheckpointError):
  """A save failed (disk full, no permission, a file size limit)."""


def save(manager, step: int, state, meta: dict, metrics=None):
  """Starts saving `step` (Orbax finishes it in the background).

  Orbax writes into a temporary folder and renames it when complete, so a
  failed or killed save never replaces or removes an earlier checkpoint: old
  ones are deleted only after a newer one is committed.
  """
  try:
    manager.save(step, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)))
  except Exception as e:  # Also an earlier background save's failure.
    raise _save_failed(manager, e) from None


def wait_until_saved(manager):
  """Blocks until every started save is committed; SaveError if one failed."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _save_failed(manager, e) from None


def _save_failed(manager, error) -> SaveError:
  first_line = (str(error).splitlines() or [''])[0]
  if len(first_line) > 240:
    first_line = first_line[:60] + ' ... ' + first_line[-160:]
  # The operating system's reason by name, first if shortening dropped it
  # (TensorStore's long messages end with its number alone).
  code = getattr(error, 'errno', None)
  if found := re.search(r"os_error_code='?(\d+)", str(error)):
    code = code or int(found.group(1))
  if code and os.strerror(code) not in first_line:
    first_line = f'{os.strerror(code)}: {first_line}'
  directory = str(manager.directory)  # What is on disk, not in the manager.
  steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  return SaveError(
      f'saving a checkpoint in {manager.directory} failed: '
      f'{type(error).__name__}: {first_line}; the checkpoints saved before '
      f'are intact (steps: {steps or "none"})')


def select_step(manager, which: str) -> int:
  """'best' (validation accuracy), 'best_loss', 'latest' or a step number."""
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f'no checkpoint in {manager.directory}')
  if str(which).isdigit():
    if int(which) not in steps:
      raise CheckpointError(f'no checkpoint at step {which} in '
                            f'{manager.directory}; steps: {sorted(steps)}')
    return int(which)
  if which not in SELECTIONS:
    raise CheckpointError(f'--checkpoint={which!r} is not valid; choose one of '
                          f'{", ".join(SELECTIONS)} or a step number')
  if which == 'latest':
    return max(steps)
  scored = [(s, manager.metrics(s)) for s in steps]
  scored = [(s, m) for s, m in scored if m]
  if not scored:  # Only checkpoints saved without an evaluation.
    return max(steps)
  if which == 'best':
    return max(scored, key=lambda sm: (sm[1]['val_accuracy'], sm[0]))[0]
  return min(scored, key=lambda sm: (sm[1]['val_loss'], -sm[0]))[0]


def read_meta(manager, step: int) -> dict:
  """A checkpoint's JSON record (architecture, normalization, class names,
  config, members), unchecked."""
  try:
    return manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
  except Exception as e:  # Orbax raises several types for missing files.
    raise _corrupt(manager, step, e) from None


def restore_meta(manager, step: int, config) -> dict:
  """Reads a checkpoint's JSON record; refuses another architecture and a
  checkpoint older than members."""
  meta = read_meta(manager, step)
  if 'members' not in meta:
    raise CheckpointError(
        f'checkpoint {step} in {manager.directory} was written before runs '
        'had members, a format this version no longer reads; restore it '
        'with resnet_jax 0a73b07 or earlier and save it again')
  expected = architecture(config)
  # An architecture key added since the checkpoint was written (e.g.
  # model.width_factor) has its default there.
  saved = {**architecture(config_lib.base_config()),
           **meta.get('architecture', {})}
  diffs = [f'{k}={saved.get(k)!r} (config: {v!r})'
           for k, v in expected.items() if saved.get(k) != v]
  if diffs:
    raise CheckpointError(f'checkpoint {step} in {manager.directory} was '
                          f'written for another architecture: {", ".join(diffs)}')
  return meta


def restore_state(manager, step: int, target):
  """Restores the train state into the shapes and shardings of `target`."""
  # Orbax's metadata tree and the TrainState differ in container types, so
  # compare what matters, the arrays: an optimizer change alters them.
  shapes = lambda tree: sorted((tuple(x.shape), str(x.dtype))
                               for x in jax.tree.leaves(tree))
  saved = shapes(_state_metadata(manager, step))
  if saved != shapes(target):
    raise CheckpointError(
        f'checkpoint {step} in {manager.directory} holds another train state '
        '(was train.optimizer, or train.ema_decay to or from 0, changed?); '
        'rerun with --restart to start over')
  try:
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    ))['state']
  except Exception as e:
    raise _corrupt(manager, step, e) from None


def has_average(manager, step: int) -> bool:
  """Whether checkpoint `step` holds averaged weights (train.ema_decay)."""
  return 'ema' in _state_metadata(manager, step)


def restore_variables(manager, step: int, sharding, weights: str = 'raw'):
  """Restores only params and batch_stats (with their member axis), the raw
  ones or with weights='ema' their average, whatever the optimizer was."""
  saved = _state_metadata(manager, step)
  try:
    variables = {'params': saved['params'], 'batch_stats': saved['batch_stats']}
    if weights == 'ema':
      variables = {'ema': {k: saved['ema'][k] for k in variables}}
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        variables)
    # Partial restore: the optimizer state on disk is left unread.
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target))))
  except Exception as e:
    raise _corrupt(manager, step, e) from None
  return restored['state']['ema'] if weights == 'ema' else restored['state']


def _state_metadata(manager, step: int):
  """The saved train state's array metadata tree (shapes, dtypes)."""
  try:
    saved = manager.item_metadata(step)['state']
  except Exception as e:
    raise _corrupt(manager, step, e) from None
  if not saved:  # Orbax returns None when the metadata file is gone.
    raise _corrupt(manager, step, FileNotFoundError('no state metadata'))
  return saved


def restore_or_init(manager, config, state, workdir):
  """(state, step, meta) of the newest intact checkpoint, else (state, 0,
  None).

  Unreadable checkpoints are moved aside (newest_intact). A readable one
  written for another architecture, optimizer or number of members is an
  error. The config's learning rates and weight decays apply from here on.
  """
  def restore(manager, step):
    meta = restore_meta(manager, step, config)
    check_members(meta, config, manager.directory, step)
    optim.check_resumable(meta.get('config', {}).get('train', {}), config.train,
                          f'checkpoint {step} in {manager.directory}')
    return restore_state(manager, step, state), meta

  found = newest_intact(manager, workdir, restore)
  if found is None:
    return state, 0, None
  step, (restored, meta) = found
  if jax.process_index() == 0:
    print(f'Resuming from step {step} in {manager.directory}')
  hyperparams = optim.hyperparams_state(state.opt_state).hyperparams
  state = restored.replace(opt_state=optim.with_hyperparams(
      restored.opt_state, hyperparams['learning_rate'],
      hyperparams['weight_decay']))
  return state, step, meta


def archive_previous_run(workdir: str) -> str | None:
  """Moves a workdir's contents, but the run's lock, to WORKDIR/archive-TIME/:
  a fresh start that deletes nothing. None if there was nothing to move."""
  names = [n for n in os.listdir(workdir)
           if not n.startswith('archive-') and n != workdir_lib.LOCK_FILE]
  target = os.path.join(workdir, f'archive-{time.strftime("%Y%m%d-%H%M%S")}')
  if jax.process_index() == 0 and names:
    os.makedirs(target)
    for name in names:
      os.rename(os.path.join(workdir, name), os.path.join(target, name))
  multihost_sync('archive')
  return target if names else None


def newest_intact(manager, workdir: str, restore):
  """(step, restore(manager, step)) of the newest checkpoint that reads, or
  None. An unreadable one (a kill during a save, a truncated file) is moved
  to WORKDIR/corrupt_checkpoints/ with a warning, never deleted."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, restore(manager, step)
    except CorruptCheckpointError as e:
      moved = quarantine(manager, step, workdir)
      print(f'warning: skipping checkpoint {step} ({e}); moved it to {moved}',
            file=sys.stderr)
  return None


def quarantine(manager, step: int, workdir: str) -> str:
  """Moves an unreadable checkpoint out of the manager's way (not deleted)."""
  target = os.path.join(workdir, 'corrupt_checkpoints',
                        f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(os.path.join(manager.directory, str(step)), target)
  multihost_sync('quarantine')
  manager.reload()
  return target


def multihost_sync(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _corrupt(manager, step, error) -> CheckpointError:
  if not os.path.isdir(os.path.join(manager.directory, str(step))):
    # A run training in the workdir deleted it (retention) as it was read.
    return CheckpointError(
        f'checkpoint {step} in {manager.directory} was deleted while it was '
        'read (a run training there keeps only its latest and best steps); '
        'rerun, or choose a step with --checkpoint')
  first_line = (str(error).splitlines() or [''])[0][:200]
  return CorruptCheckpointError(
      f'checkpoint {step} in {manager.directory} is unreadable: '
      f'{type(error).__name__}: {first_line}')
