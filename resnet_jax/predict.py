"""Per-example predictions of a restored checkpoint (through inference.py).

- `--mode=samples`: K seeded random images of a split, ground truth and
  prediction side by side, and a labelled image grid PNG.
- `--mode=predict`: top-5 classes of image files, decoded as the folder data
  source decodes them.

Images are normalized with the statistics stored in the checkpoint and named
with its class names, so nothing depends on the training data being present.
Files go to WORKDIR/eval/SPLIT_stepSTEP/ (process 0 only), each replaced
whole (workdir.atomic_file); checkpoints are never touched.
"""
import json
import math
import os

import jax
import numpy as np

from resnet_jax import data, inference
from resnet_jax import workdir as workdir_lib
from resnet_jax.data import folder
from resnet_jax.errors import ConfigError, DataError, require

TOP_K = 5
DPI = 100
# Samples grid: inches per tile.
TILE_WIDTH, TILE_HEIGHT = 1.8, 2.0


def used_members(meta) -> list[dict]:
  """The members whose predictions were averaged: seed and hyperparameters."""
  return [{k: m[k] for k in ('seed', 'learning_rate', 'weight_decay')}
          for m in meta['members']]


def describe_members(meta, member, weights='raw') -> str:
  """Which member(s) predicted ('' for a single-member run) and, when they
  are the averaged weights, that they are."""
  averaged = ', averaged weights' if weights == 'ema' else ''
  if member is not None:
    return f', member {member}{averaged}'
  count = len(meta['members'])
  return (f', ensemble of {count} members' if count > 1 else '') + averaged


def output_dir(workdir: str, split: str, step: int) -> str:
  return os.path.join(workdir, 'eval', f'{split}_step{step}')


def _is_writer() -> bool:
  return jax.process_index() == 0


# --mode=samples -------------------------------------------------------------


def samples(config, workdir: str, which: str = 'best', split: str = 'test',
            num_samples: int = 16, seed=None, as_json: bool = False,
            member=None, weights: str = 'auto') -> dict:
  """K random images of `split` (seeded), truth and prediction, and a grid.

  Predictions are the ensemble's (the members' averaged probabilities), or
  member `member`'s alone, with the weights `weights` asks for
  (inference.WEIGHTS: by default the averaged ones when the run has them).
  """
  if num_samples < 1:
    raise ConfigError(f'--num_samples={num_samples} must be >= 1')
  seed = config.seed if seed is None else seed
  restored = inference.restore_for_inference(config, workdir, which, member,
                                             weights)
  step, meta = restored.step, restored.meta
  examples = inference.load_split(config, split)
  class_names = meta['class_names']
  count = min(num_samples, len(examples))
  indices = np.random.default_rng(seed).choice(len(examples), count,
                                               replace=False)
  if isinstance(examples, data.Split):
    chosen = data.Split(examples.images[indices], examples.labels[indices])
  else:
    chosen = examples.load(indices)
  _, probabilities, predictions = restored.predict(
      chosen, config.train.eval_batch_size, **inference.views(config.train))
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
            'members': used_members(meta), 'weights': restored.weights}
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
          f'checkpoint step {step}'
          f'{describe_members(meta, member, restored.weights)}, seed '
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
  return workdir_lib.save_figure(fig, path)


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
      found = folder.image_files(path)
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
  return data.to_channels(images, grayscale)


def predict(config, workdir: str, which: str = 'best', images: str = '',
            as_json: bool = False, member=None,
            weights: str = 'auto') -> list[dict]:
  """Top-5 classes with probabilities for each image file, of the ensemble
  (the members' averaged probabilities) or of member `member` alone, with
  the weights `weights` asks for (inference.WEIGHTS)."""
  paths = image_paths(images)  # Bad paths fail before the model loads.
  decoded = decode_images(paths, config.data.image_size, config.data.grayscale)
  restored = inference.restore_for_inference(config, workdir, which, member,
                                             weights)
  step, meta = restored.step, restored.meta
  class_names = meta['class_names']
  split = data.Split(decoded, np.zeros(len(paths), np.int32))
  _, probabilities, _ = restored.predict(split, config.train.eval_batch_size,
                                         **inference.views(config.train))
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
                        'weights': restored.weights, 'predictions': results}))
    else:
      print(format_predictions(results))
      print(f'checkpoint step {step}'
            f'{describe_members(meta, member, restored.weights)}')
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
