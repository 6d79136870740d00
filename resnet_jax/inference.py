"""Inference: one or many members' predictions and metrics over a split.

Every evaluation goes through one function, `run`: training's validation,
`--mode=evaluate`, samples, predict and ensembles. A split is cut into padded
chunks of whole batches (padding is masked out, so every example counts
once) and fed to one jitted function that scans over the chunks with every
member vmapped. A split in memory arrives as a single item holding all its
chunks (one device call); a split streamed from disk arrives one chunk at a
time (constant memory). The two are the same function fed by two iterators.

The ensemble of several members averages their probabilities; with one
member, the ensemble is that member.
"""
import dataclasses
import math
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax import checkpoint, data, mesh as mesh_lib, models
from resnet_jax import config as config_lib
from resnet_jax.data import augment, stream
from resnet_jax.errors import ConfigError


@flax.struct.dataclass
class Members:
  """The variables of one or more members, stacked on a leading axis."""
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  params: Any
  batch_stats: Any


# --weights: 'auto' is the averaged weights when the run has them, else the
# raw; 'ema' insists on the averaged ones (train.ema_decay), 'raw' the raw.
WEIGHTS = ('auto', 'ema', 'raw')


def members_of(state, weights: str = 'raw') -> Members:
  """The inference view of a train state (its optimizer state left out):
  its raw weights, or with 'ema' their average (train.ema_decay)."""
  if weights == 'ema':
    return Members(state.apply_fn, state.ema['params'],
                   state.ema['batch_stats'])
  return Members(state.apply_fn, state.params, state.batch_stats)


def cross_entropy(logits, labels, label_smoothing=0.0):
  """Per-example softmax cross-entropy against integer `labels` (batch,) or
  soft targets (batch, classes) that sum to one (mixup, CutMix); label
  smoothing applies on top of either."""
  if labels.ndim == logits.ndim:
    targets = labels
  else:
    targets = jax.nn.one_hot(labels, logits.shape[-1])
  targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def eval_step(member, batch, *, normalization, flip=False, translate=0):
  """(sums of loss and correct predictions over the unmasked examples, logits)
  of one member.

  With `flip`, the logits are the mean of the image's and its mirror's. With
  `translate` pixels, airbench's translation test-time augmentation on top:
  half the weight on those, a quarter each on the same views of the image
  shifted by `translate` pixels down-right and up-left (reflect-padded).
  """
  images = augment.normalize(batch['image'], *normalization)
  forward = lambda images: member.apply_fn(
      {'params': member.params, 'batch_stats': member.batch_stats}, images,
      train=False)

  def views(images):  # The image, and with flip its mirror.
    logits = forward(images)
    if flip:
      logits = (logits + forward(images[:, :, ::-1])) / 2
    return logits

  logits = views(images)
  if translate:
    t, (height, width) = translate, images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (t, t), (t, t), (0, 0)), mode='reflect')
    shifted = (views(padded[:, :height, :width])
               + views(padded[:, 2 * t:, 2 * t:])) / 2
    logits = (logits + shifted) / 2
  loss = cross_entropy(logits, batch['label'])
  correct = jnp.argmax(logits, -1) == batch['label']
  return masked_sums(loss, correct, batch['mask']), logits


def masked_sums(loss, correct, mask) -> dict:
  return {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}


def ensemble_sums(logits, batch):
  """Masked sums of the members' averaged probabilities, and the log of
  that average, from each member's logits (members, batch, classes)."""
  log_probabilities = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  # log of the mean probability, without leaving log space.
  log_mean = (jax.nn.logsumexp(log_probabilities, 0)
              - jnp.log(logits.shape[0]))
  loss = -jnp.take_along_axis(log_mean, batch['label'][:, None], -1)[:, 0]
  correct = jnp.argmax(log_mean, -1) == batch['label']
  return masked_sums(loss, correct, batch['mask']), log_mean


def views(train_config) -> dict:
  """The test-time views a config asks for (train.eval_flip,
  train.eval_translate), as eval_step's and make_eval_fn's keywords."""
  return {'flip': bool(train_config.eval_flip),
          'translate': int(train_config.eval_translate)}


def make_eval_fn(normalization, mesh, flip=False, translate=0):
  """Jitted (members, chunks) -> (sums, (probabilities, predictions)).

  `chunks`: {'image', 'label', 'mask'} of shape (chunks, batch, ...).
  sums['members'] are each member's masked sums (loss, correct, count:
  (members,)), sums['ensemble'] those of the members' averaged
  probabilities; per example, the ensemble's probabilities (chunks, batch,
  classes) and their argmax (chunks, batch). Outputs are replicated, so every
  process holds them all.
  """

  def eval_fn(members, chunks):
    def member_step(params, batch_stats, batch):
      member = members.replace(params=params, batch_stats=batch_stats)
      return eval_step(member, batch, normalization=normalization, flip=flip,
                       translate=translate)

    def body(totals, batch):
      sums, logits = jax.vmap(member_step, in_axes=(0, 0, None))(
          members.params, members.batch_stats, batch)
      ensemble, log_mean = ensemble_sums(logits, batch)
      totals = jax.tree.map(jnp.add, totals,
                            {'members': sums, 'ensemble': ensemble})
      return totals, (jnp.exp(log_mean), jnp.argmax(log_mean, -1))

    num_members = jax.tree.leaves(members.params)[0].shape[0]
    zeros = {'loss': 0.0, 'correct': 0, 'count': 0}
    zeros = {'members': {k: jnp.zeros(num_members) for k in zeros},
             'ensemble': jax.tree.map(jnp.asarray, zeros)}
    return jax.lax.scan(body, zeros, chunks)

  return jax.jit(eval_fn, out_shardings=NamedSharding(mesh, P()))


def chunks(split, batch_size: int, mesh):
  """The split's padded chunks on the mesh, batch-sharded over 'data': an
  iterable of (host labels, chunks) that `run` may iterate once per
  evaluation.

  In memory (data.Split): a list of one item with every chunk, placed on the
  devices now and reused by every evaluation. Streamed
  (stream.StreamedSplit): one chunk per item, decoded anew each time it is
  iterated. Every chunk has the same shape (one compilation).
  """
  num_devices = mesh.devices.size
  batch_size = math.ceil(min(batch_size, len(split)) / num_devices) * num_devices
  sharding = NamedSharding(mesh, P(None, 'data'))

  def place(part: data.Split, num_chunks: int):
    arrays = data.padded(part, num_chunks * batch_size)
    arrays = {k: v.reshape(num_chunks, batch_size, *v.shape[1:])
              for k, v in arrays.items()}
    return part.labels, mesh_lib.put(arrays, sharding)

  if isinstance(split, data.Split):
    return [place(split, math.ceil(len(split) / batch_size))]
  return _Streamed(split, batch_size, place)


class _Streamed:
  """A streamed split's chunks, one per batch, every time it is iterated."""

  def __init__(self, split, batch_size: int, place):
    self.split, self.batch_size, self.place = split, batch_size, place

  def __iter__(self):
    for batch in self.split.batches(np.arange(len(self.split)),
                                    self.batch_size):
      yield self.place(data.Split(batch['image'], batch['label']), 1)


def run(eval_fn, members: Members, split_chunks, keep_probabilities=True):
  """(sums, labels (N,), probabilities (N, C) or None, predictions (N,)) of
  the members over `split_chunks` (of `chunks`).

  The sums (of make_eval_fn) are added up over the chunks in float64; the
  ensemble's probabilities are kept unless `keep_probabilities` is False (a
  streamed split's N x C may not fit).
  """
  totals, labels, probabilities, predictions = None, [], [], []
  for part_labels, part in split_chunks:
    sums, (probs, predicted) = jax.device_get(eval_fn(members, part))
    sums = jax.tree.map(lambda x: np.asarray(x, np.float64), sums)
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    n = len(part_labels)
    labels.append(part_labels)
    predictions.append(predicted.reshape(-1)[:n])
    if keep_probabilities:
      probabilities.append(probs.reshape(-1, probs.shape[-1])[:n])
  return (totals, np.concatenate(labels),
          np.concatenate(probabilities) if keep_probabilities else None,
          np.concatenate(predictions))


def metrics(sums) -> dict:
  """The members' mean loss and accuracy, the lists `member_loss` and
  `member_accuracy`, and the ensemble's {loss, accuracy}."""
  members = sums['members']
  count = int(np.asarray(members['count']).reshape(-1)[0])
  losses = np.asarray(members['loss'], np.float64).reshape(-1) / count
  accuracies = np.asarray(members['correct'], np.float64).reshape(-1) / count
  ensemble = sums['ensemble']
  return {'loss': float(np.mean(losses)),
          'accuracy': float(np.mean(accuracies)), 'num_examples': count,
          'member_loss': losses.tolist(),
          'member_accuracy': accuracies.tolist(),
          'ensemble': {'loss': float(ensemble['loss']) / count,
                       'accuracy': float(ensemble['correct']) / count}}


def predict_split(members: Members, split, normalization, batch_size: int,
                  mesh, flip=False):
  """(metrics, probabilities (N, C), predictions (N,)) of every example."""
  sums, _, probabilities, predictions = run(
      make_eval_fn(normalization, mesh, flip), members,
      chunks(split, batch_size, mesh))
  return metrics(sums), probabilities, predictions


def load_split(config, name: str):
  """Split `name` for evaluation: a data.Split in memory, or, when it is too
  large (data.streaming), a stream.StreamedSplit read batch by batch."""
  if name in data.SPLITS and stream.should_stream_split(config, name):
    return stream.open_split(config, name)
  return data.load_splits(config, (name,))[name]


def restore(config, workdir: str, which: str, mesh):
  """(members, step, meta) of `which` checkpoint, its raw weights."""
  return restore_weights(config, workdir, which, mesh, 'raw')[:3]


def restore_weights(config, workdir: str, which: str, mesh, weights: str):
  """(members, step, meta, weights used: 'ema' or 'raw') of `which`
  checkpoint; nothing is written.

  Only params and batch statistics are read (the raw ones or their
  average, as `weights` of WEIGHTS asks), so the optimizer settings of the
  config need not match those of the run that wrote the checkpoint.
  """
  if weights not in WEIGHTS:
    raise ConfigError(f'--weights={weights!r} is not valid; choose one of '
                      f'{", ".join(WEIGHTS)}')
  manager = checkpoint.create_manager(workdir, read_only=True)
  try:
    step = checkpoint.select_step(manager, which)
    meta = checkpoint.restore_meta(manager, step, config)
    averaged = checkpoint.has_average(manager, step)
    if weights == 'ema' and not averaged:
      raise ConfigError(
          f'--weights=ema: checkpoint {step} in {workdir} holds no averaged '
          'weights (its run had train.ema_decay=0); use --weights=raw')
    used = 'ema' if averaged and weights != 'raw' else 'raw'
    variables = checkpoint.restore_variables(
        manager, step, NamedSharding(mesh, P()), used)
  finally:
    manager.close()
  members = Members(models.from_config(config).apply, variables['params'],
                    variables['batch_stats'])
  return members, step, meta, used


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint ready for inference: its members (every one, whose
  ensemble predicts, or the one asked for), step, JSON record (checkpoint.
  make_meta), the mesh the members live on, and which weights they are:
  'ema' (the average, train.ema_decay) or 'raw'."""
  members: Members
  step: int
  meta: dict
  mesh: Any
  weights: str = 'raw'
  # make_eval_fn per (flip, translate), so repeated predictions compile once.
  _eval_fns: dict = dataclasses.field(default_factory=dict, repr=False,
                                      compare=False)

  @property
  def normalization(self) -> tuple[list, list]:
    """The per-channel (mean, std) the checkpoint was trained with."""
    return self.meta['normalization']['mean'], self.meta['normalization']['std']

  def eval_fn(self, flip: bool = False, translate: int = 0):
    if (flip, translate) not in self._eval_fns:
      self._eval_fns[flip, translate] = make_eval_fn(
          self.normalization, self.mesh, flip, translate)
    return self._eval_fns[flip, translate]

  def predict(self, split, batch_size: int, flip: bool = False,
              translate: int = 0):
    """(metrics, probabilities (N, C), predictions (N,)) of every example of
    `split` (a data.Split in memory)."""
    sums, _, probabilities, predictions = run(
        self.eval_fn(flip, translate), self.members,
        chunks(split, batch_size, self.mesh))
    return metrics(sums), probabilities, predictions


def restore_for_inference(config, workdir: str, which='best',
                          member=None, weights: str = 'auto') -> Restored:
  """Checkpoint `which` of `workdir` on this host's devices, with every
  member or member `member` alone: --mode=evaluate, samples, predict and
  resnet_jax.load all start here, and this is where the weights are chosen:
  by default the averaged ones when the run kept an average
  (train.ema_decay), else the raw ones; weights='raw' or 'ema' insists."""
  config_lib.validate(config)
  mesh = mesh_lib.create_mesh()
  members, step, meta, used = restore_weights(config, workdir, which, mesh,
                                              weights)
  if member is not None:
    members, meta = select_member(members, meta, member)
  return Restored(members, step, meta, mesh, used)


def select_member(members: Members, meta, k: int):
  """(members, meta) of member k alone (--member=K), still with its axis."""
  saved = meta['members']
  if not 0 <= k < len(saved):
    raise ConfigError(f'--member={k} is not valid: the checkpoint has '
                      f'{len(saved)} member(s), 0 to {len(saved) - 1}')
  members = jax.tree.map(lambda x: x[k:k + 1], members)
  return members, {**meta, 'members': [saved[k]]}
