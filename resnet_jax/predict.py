"""Per-example predictions of a restored checkpoint.

- `--mode=samples`: K seeded random images of a split, ground truth and
  prediction side by side, and a labelled image grid PNG.
- `--mode=predict`: top-5 classes of image files, decoded as the folder data
  source decodes them.
- `--mode=evaluate` (see evaluate.py) uses this module's shared inference
  pieces: `restore_for_inference`, `load_split`, `predict_split` /
  `predict_streamed` and the confusion matrix and per-class accuracy. This
  module never imports evaluate.py (no import cycle).

Images are normalized with the statistics stored in the checkpoint and named
with its class names, so nothing depends on the training data being present.
Files go to WORKDIR/eval/SPLIT_stepSTEP/ (process 0 only); checkpoints are
never touched.
"""
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import optax

from resnet_jax import checkpoint, data, train
from resnet_jax import config as config_lib
from resnet_jax.data import folder, stream
from resnet_jax.errors import ConfigError, DataError, require

TOP_K = 5
DPI = 100
# Samples grid: inches per tile.
TILE_WIDTH, TILE_HEIGHT = 1.8, 2.0


def restore_for_inference(config, workdir: str, which: str, mesh):
  """Returns (state, step, meta) for `which` checkpoint; nothing is written.

  Only params and batch statistics are read, so the optimizer settings of
  the config need not match those of the run that wrote the checkpoint. The
  state holds every member on a leading axis, the members are in
  meta['members'] (one for a checkpoint written before runs had members).
  """
  manager = checkpoint.create_manager(workdir, read_only=True)
  step = checkpoint.select_step(manager, which)
  meta = checkpoint.restore_meta(manager, step, config)
  variables = checkpoint.restore_variables(manager, step,
                                           NamedSharding(mesh, P()))
  if 'members' not in meta:  # Written before members: add their axis.
    variables = jax.tree.map(lambda x: x[None], variables)
    meta = {**meta, 'members': checkpoint.members(meta)}
  model = train.create_model(config)
  state = train.TrainState.create(apply_fn=model.apply,
                                  params=variables['params'],
                                  batch_stats=variables['batch_stats'],
                                  tx=optax.identity())
  manager.close()
  return state, step, meta


def ensemble_sums(logits, batch):
  """Masked sums of loss and correct predictions of the members' averaged
  probabilities, from each member's logits (members, batch, classes)."""
  log_probabilities = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  # log of the mean probability, without leaving log space.
  log_mean = (jax.nn.logsumexp(log_probabilities, 0)
              - jnp.log(logits.shape[0]))
  loss = -jnp.take_along_axis(log_mean, batch['label'][:, None], -1)[:, 0]
  correct = jnp.argmax(log_mean, -1) == batch['label']
  mask = batch['mask']
  sums = {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}
  return sums, log_mean


def make_predict_fn(normalization, mesh, flip=False):
  """Jitted (state, eval_data) -> (sums, (probabilities, predictions)).

  One pass over the padded chunks of `train.put_eval_chunks` with every
  member of `state`: sums['members'] are each member's masked sums of
  `train.eval_step` (loss, correct, count: (members,)), sums['ensemble']
  those of the members' averaged probabilities; per example, the ensemble's
  probabilities (chunks, batch, classes) and their argmax (chunks, batch).
  With one member the ensemble is that member. Outputs are replicated, so
  every process holds them all.
  """

  def predict_fn(state, eval_data):
    def member_step(params, batch_stats, batch):
      member = state.replace(params=params, batch_stats=batch_stats)
      return train.eval_step(member, batch, normalization=normalization,
                             flip=flip)

    def body(totals, batch):
      sums, logits = jax.vmap(member_step, in_axes=(0, 0, None))(
          state.params, state.batch_stats, batch)
      ensemble, log_mean = ensemble_sums(logits, batch)
      totals = jax.tree.map(jnp.add, totals,
                            {'members': sums, 'ensemble': ensemble})
      return totals, (jnp.exp(log_mean), jnp.argmax(log_mean, -1))
    num_members = jax.tree.leaves(state.params)[0].shape[0]
    zeros = {'loss': 0.0, 'correct': 0, 'count': 0}
    zeros = {'members': {k: jnp.zeros(num_members) for k in zeros},
             'ensemble': jax.tree.map(jnp.asarray, zeros)}
    return jax.lax.scan(body, zeros, eval_data)

  return jax.jit(predict_fn, out_shardings=NamedSharding(mesh, P()))


def predict_split(state, split: data.Split, normalization, batch_size: int,
                  mesh, flip=False):
  """(metrics, probabilities (N, C), predictions (N,)) for every example.

  The metrics are those of train.member_metrics (the members' mean and
  lists), with 'ensemble' ({loss, accuracy}); probabilities and predictions
  are the ensemble's (with one member, the member's).
  """
  return _predict(make_predict_fn(normalization, mesh, flip), state, split,
                  batch_size, mesh)


def split_metrics(sums) -> dict:
  """Metrics from make_predict_fn's sums (summed over chunks)."""
  metrics = train.member_metrics(sums['members'])
  ensemble, count = sums['ensemble'], float(sums['ensemble']['count'])
  metrics['ensemble'] = {'loss': float(ensemble['loss']) / count,
                         'accuracy': float(ensemble['correct']) / count}
  return metrics


def _predict(predict_fn, state, split: data.Split, batch_size: int, mesh,
             with_sums=False):
  eval_data = train.put_eval_chunks(split, batch_size, mesh)
  sums, (probabilities, predictions) = jax.device_get(
      predict_fn(state, eval_data))
  n = len(split)
  outputs = (probabilities.reshape(-1, probabilities.shape[-1])[:n],
             predictions.reshape(-1)[:n])
  return ((sums if with_sums else split_metrics(sums)),) + outputs


def load_split(config, name: str):
  """Split `name` for evaluation: a data.Split in memory, or, when it is too
  large (data.streaming), a stream.StreamedSplit read batch by batch."""
  if name in data.SPLITS and stream.should_stream_split(config, name):
    return stream.open_split(config, name)
  return data.load_splits(config, (name,))[name]


def predict_streamed(state, split: stream.StreamedSplit, normalization,
                     batch_size: int, mesh, flip=False):
  """(metrics, labels (N,), predictions (N,)) of a streamed split, decoding
  one batch at a time (probabilities are not kept: N x classes may not fit)."""
  predict_fn = make_predict_fn(normalization, mesh, flip)  # Compiled once.
  totals, labels, predictions = None, [], []
  for batch in split.batches(np.arange(len(split)), batch_size):
    part = data.Split(batch['image'], batch['label'])
    sums, _, predicted = _predict(predict_fn, state, part, batch_size, mesh,
                                  with_sums=True)
    sums = jax.tree.map(lambda x: np.asarray(x, np.float64), sums)
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    labels.append(part.labels)
    predictions.append(predicted)
  return (split_metrics(totals), np.concatenate(labels),
          np.concatenate(predictions))


def _restore(config, workdir, which, member=None):
  config_lib.validate(config)
  mesh = train.create_mesh()
  state, step, meta = restore_for_inference(config, workdir, which, mesh)
  if member is not None:
    state, meta = select_member(state, meta, member)
  normalization = (meta['normalization']['mean'], meta['normalization']['std'])
  return state, step, meta, normalization, mesh


def used_members(meta) -> list[dict]:
  """The members whose predictions were averaged: seed and hyperparameters."""
  return [{k: m[k] for k in ('seed', 'learning_rate', 'weight_decay')}
          for m in meta['members']]


def describe_members(meta, member) -> str:
  """'' for a single-member run, else which member(s) predicted."""
  if member is not None:
    return f', member {member}'
  count = len(meta['members'])
  return f', ensemble of {count} members' if count > 1 else ''


def select_member(state, meta, k: int):
  """(state, meta) of member k alone (--member=K), still with a member axis."""
  members = meta['members']
  if not 0 <= k < len(members):
    raise ConfigError(f'--member={k} is not valid: the checkpoint has '
                      f'{len(members)} member(s), 0 to {len(members) - 1}')
  state = state.replace(params=jax.tree.map(lambda x: x[k:k + 1], state.params),
                        batch_stats=jax.tree.map(lambda x: x[k:k + 1],
                                                 state.batch_stats))
  return state, {**meta, 'members': [members[k]]}


def output_dir(workdir: str, split: str, step: int) -> str:
  return os.path.join(workdir, 'eval', f'{split}_step{step}')


def _is_writer() -> bool:
  return jax.process_index() == 0


# --mode=evaluate: confusion matrix --------------------------------------------


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  counts = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
  return counts


def per_class_table(counts, class_names) -> list[dict]:
  totals = counts.sum(1)
  return [{'class': name, 'label': k, 'correct': int(counts[k, k]),
           'count': int(totals[k]),
           'accuracy': float(counts[k, k] / totals[k]) if totals[k] else None}
          for k, name in enumerate(class_names)]


def format_per_class(rows) -> str:
  width = max([len('class')] + [len(r['class']) for r in rows])
  lines = [f'{"class":<{width}}  accuracy  correct/count']
  for r in rows:
    accuracy = 'n/a' if r['accuracy'] is None else f'{r["accuracy"]:.4f}'
    lines.append(f'{r["class"]:<{width}}  {accuracy:>8}  '
                 f'{r["correct"]}/{r["count"]}')
  return '\n'.join(lines)


def confusion_figsize(num_classes: int) -> tuple[float, float]:
  side = min(max(5.0, 0.5 * num_classes + 2.0), 20.0)
  return side, side


def plot_confusion(counts, class_names, path, title=''):
  """Rows: true class, columns: predicted; colour is the row fraction."""
  Figure = require('matplotlib.figure', 'matplotlib',
                   'the confusion matrix plot').Figure
  num_classes = len(class_names)
  fig = Figure(figsize=confusion_figsize(num_classes), dpi=DPI,
               layout='constrained')
  ax = fig.add_subplot()
  totals = np.maximum(counts.sum(1, keepdims=True), 1)
  fractions = counts / totals
  image = ax.imshow(fractions, cmap='Blues', vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, shrink=0.8, label='fraction of the true class')
  if num_classes <= 30:
    for i in range(num_classes):
      for j in range(num_classes):
        if counts[i, j]:
          ax.text(j, i, str(counts[i, j]), ha='center', va='center',
                  fontsize=8,
                  color='white' if fractions[i, j] > 0.5 else 'black')
  if num_classes <= 50:
    ax.set_xticks(range(num_classes), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(num_classes), class_names, fontsize=8)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  fig.savefig(path)
  return path


def write_confusion(workdir, split, step, labels, predictions, class_names):
  """Prints per-class accuracy; writes the PNG and JSON. Returns the folder."""
  counts = confusion_matrix(labels, predictions, len(class_names))
  rows = per_class_table(counts, class_names)
  if not _is_writer():
    return None
  print(format_per_class(rows))
  folder_path = output_dir(workdir, split, step)
  os.makedirs(folder_path, exist_ok=True)
  with open(os.path.join(folder_path, 'per_class_accuracy.json'), 'w') as f:
    json.dump({'split': split, 'step': step,
               'num_examples': int(counts.sum()),
               'accuracy': float(np.trace(counts) / counts.sum()),
               'classes': rows, 'confusion_matrix': counts.tolist()},
              f, indent=1)
  accuracy = np.trace(counts) / counts.sum()
  try:
    plot_confusion(counts, class_names,
                   os.path.join(folder_path, 'confusion_matrix.png'),
                   title=f'{split}, step {step}: accuracy {accuracy:.4f}')
  except Exception as e:  # The metrics still count without the picture.
    print(f'warning: confusion matrix plot failed: {type(e).__name__}: {e}',
          file=sys.stderr)
  print(f'per-class accuracy and confusion matrix: {folder_path}/')
  return folder_path


# --mode=samples -------------------------------------------------------------


def samples(config, workdir: str, which: str = 'best', split: str = 'test',
            num_samples: int = 16, seed=None, as_json: bool = False,
            member=None) -> dict:
  """K random images of `split` (seeded), truth and prediction, and a grid.

  Predictions are the ensemble's (the members' averaged probabilities), or
  member `member`'s alone.
  """
  if num_samples < 1:
    raise ConfigError(f'--num_samples={num_samples} must be >= 1')
  seed = config.seed if seed is None else seed
  state, step, meta, normalization, mesh = _restore(config, workdir, which,
                                                    member)
  examples = load_split(config, split)
  class_names = meta['class_names']
  count = min(num_samples, len(examples))
  indices = np.random.default_rng(seed).choice(len(examples), count,
                                               replace=False)
  if isinstance(examples, data.Split):
    chosen = data.Split(examples.images[indices], examples.labels[indices])
  else:
    chosen = examples.load(indices)
  _, probabilities, predictions = predict_split(
      state, chosen, normalization, config.train.eval_batch_size, mesh,
      config.train.eval_flip)
  rows = [{'index': int(i), 'label': class_names[int(y)],
           'prediction': class_names[int(p)],
           'probability': float(probabilities[n, p]), 'correct': bool(y == p)}
          for n, (i, y, p) in enumerate(zip(indices, chosen.labels,
                                            predictions))]
  correct = sum(r['correct'] for r in rows)
  path = os.path.join(output_dir(workdir, split, step),
                      f'samples_seed{seed}_n{count}.png')
  result = {'split': split, 'step': step, 'seed': seed, 'num_samples': count,
            'correct': correct, 'image': path, 'samples': rows,
            'members': used_members(meta)}
  if not _is_writer():
    return result
  os.makedirs(os.path.dirname(path), exist_ok=True)
  plot_samples(chosen.images, rows, path,
               title=f'{split}, step {step}, seed {seed}: {correct}/{count} '
                     'correct')
  if as_json:
    print(json.dumps(result))
  else:
    print(format_samples(rows))
    print(f'{correct}/{count} correct ({correct / count:.1%}) on {split}, '
          f'checkpoint step {step}{describe_members(meta, member)}, seed '
          f'{seed}; grid: {path}')
  return result


def format_samples(rows) -> str:
  index_w = max(len('index'), *(len(str(r['index'])) for r in rows))
  truth_w = max(len('truth'), *(len(r['label']) for r in rows))
  pred_w = max(len('prediction'), *(len(r['prediction']) for r in rows))
  lines = [f'{"index":>{index_w}}  {"truth":<{truth_w}}  '
           f'{"prediction":<{pred_w}}  probability']
  for r in rows:
    mark = '' if r['correct'] else '  x'
    lines.append(f'{r["index"]:>{index_w}}  {r["label"]:<{truth_w}}  '
                 f'{r["prediction"]:<{pred_w}}  {r["probability"]:11.4f}{mark}')
  return '\n'.join(lines)


def grid_shape(count: int) -> tuple[int, int]:
  cols = math.ceil(math.sqrt(count))
  return math.ceil(count / cols), cols


def plot_samples(images, rows, path, title=''):
  """A grid of the images, each titled truth / prediction (green if right)."""
  Figure = require('matplotlib.figure', 'matplotlib',
                   '--mode=samples (its image grid)').Figure
  num_rows, num_cols = grid_shape(len(rows))
  fig = Figure(figsize=(num_cols * TILE_WIDTH, num_rows * TILE_HEIGHT),
               dpi=DPI, layout='constrained')
  axes = fig.subplots(num_rows, num_cols, squeeze=False)
  for n, ax in enumerate(axes.flat):
    ax.axis('off')
    if n >= len(rows):
      continue
    image = images[n]
    if image.shape[-1] == 1:
      ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=255,
                interpolation='nearest')
    else:
      ax.imshow(image, interpolation='nearest')
    r = rows[n]
    ax.set_title(f'{r["label"]}\n→ {r["prediction"]} '
                 f'({r["probability"]:.2f})', fontsize=8,
                 color='green' if r['correct'] else 'red')
  if title:
    fig.suptitle(title, fontsize=9)
  fig.savefig(path)
  return path


# --mode=predict -------------------------------------------------------------


def image_paths(spec: str) -> list[str]:
  """Comma-separated files and folders to image files, in order.

  A folder gives its .png/.jpg/.jpeg files (recursively, sorted, hidden
  entries skipped, as the folder data source lists them).
  """
  paths = [p.strip() for p in (spec or '').split(',') if p.strip()]
  if not paths:
    raise DataError('--mode=predict needs --images=PATH[,PATH...] (image files '
                    'or folders)')
  files = []
  for path in paths:
    if os.path.isdir(path):
      found = []
      for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        found += [os.path.join(root, f) for f in sorted(names)
                  if not f.startswith('.')
                  and f.lower().endswith(folder.EXTENSIONS)]
      if not found:
        raise DataError(f'{path} is a folder without any '
                        f'{"/".join(folder.EXTENSIONS)} image')
      files += found
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise DataError(f'{path}: no such image file or folder (--images)')
  return files


def decode_images(paths, image_size: int, grayscale: bool) -> np.ndarray:
  """uint8 (N, S, S, C) exactly as the folder data source decodes them."""
  images = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
  for i, path in enumerate(paths):
    try:
      images[i] = folder.decode(path, image_size)
    except Exception as e:  # Pillow raises many types for a bad file.
      message = f'{type(e).__name__}: {e}'.replace('\n', ' ')
      raise DataError(f'{path} is not a readable image ({message})') from None
  return data._to_channels(images, grayscale)


def predict(config, workdir: str, which: str = 'best', images: str = '',
            as_json: bool = False, member=None) -> list[dict]:
  """Top-5 classes with probabilities for each image file, of the ensemble
  (the members' averaged probabilities) or of member `member` alone."""
  paths = image_paths(images)  # Bad paths fail before the model loads.
  decoded = decode_images(paths, config.data.image_size, config.data.grayscale)
  state, step, meta, normalization, mesh = _restore(config, workdir, which,
                                                    member)
  class_names = meta['class_names']
  split = data.Split(decoded, np.zeros(len(paths), np.int32))
  _, probabilities, _ = predict_split(
      state, split, normalization, config.train.eval_batch_size, mesh,
      config.train.eval_flip)
  k = min(TOP_K, len(class_names))
  results = []
  for path, p in zip(paths, probabilities):
    top = np.argsort(-p, kind='stable')[:k]
    results.append({'path': path, 'top': [
        {'class': class_names[int(c)], 'label': int(c),
         'probability': float(p[c])} for c in top]})
  if _is_writer():
    if as_json:
      print(json.dumps({'step': step, 'members': used_members(meta),
                        'predictions': results}))
    else:
      print(format_predictions(results))
      print(f'checkpoint step {step}{describe_members(meta, member)}')
  return results


def format_predictions(results) -> str:
  width = max(len('class'), *(len(t['class']) for r in results
                              for t in r['top']))
  lines = []
  for r in results:
    lines.append(r['path'])
    for rank, t in enumerate(r['top'], start=1):
      lines.append(f'  {rank}. {t["class"]:<{width}}  {t["probability"]:.4f}')
  return '\n'.join(lines)
