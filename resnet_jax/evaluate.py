"""--mode=evaluate: a restored checkpoint on a whole split of the data.

Its JSON has the members' mean accuracy and loss, the accuracy's standard
deviation over members, each member's figures and the ensemble's (the
members' averaged probabilities); the confusion matrix is the ensemble's.

Besides the metrics, prints per-class accuracy and writes it, with a
confusion-matrix PNG, to WORKDIR/eval/SPLIT_stepSTEP/, each replaced whole
(workdir.atomic_file: two evaluations at once never tear one). The split is
evaluated by inference.run, in memory or streamed from disk when it is too
large.
"""
import json
import os
import sys

import jax
import numpy as np

from resnet_jax import data, errors, inference, predict
from resnet_jax import workdir as workdir_lib
from resnet_jax.errors import DataError


def evaluate(config, workdir: str, which: str = 'best',
             split: str = 'test', weights: str = 'auto') -> dict:
  """The metrics of checkpoint `which` on `split`, with the weights
  `weights` (inference.WEIGHTS) asks for: 'weights' in the result says
  which were used, 'ema' (averaged) or 'raw'."""
  restored = inference.restore_for_inference(config, workdir, which,
                                             weights=weights)
  step, meta = restored.step, restored.meta
  examples = inference.load_split(config, split)
  names = list(data.class_names(config))
  if names != meta['class_names']:
    raise DataError(f'the data\'s classes {names[:5]}... differ from those '
                    f'checkpoint {step} was trained on '
                    f'{meta["class_names"][:5]}...: accuracy would be wrong')
  sums, labels, _, predictions = inference.run(
      restored.eval_fn(**inference.views(config.train)), restored.members,
      inference.chunks(examples, config.train.eval_batch_size, restored.mesh),
      keep_probabilities=False)
  metrics = inference.metrics(sums)
  write_confusion(workdir, split, step, labels, predictions,
                  meta['class_names'])
  members = [{'seed': m['seed'], 'learning_rate': m['learning_rate'],
              'weight_decay': m['weight_decay'], 'accuracy': a, 'loss': l}
             for m, a, l in zip(meta['members'], metrics['member_accuracy'],
                                metrics['member_loss'])]
  return {'split': split, 'accuracy': metrics['accuracy'],
          'loss': metrics['loss'], 'num_examples': metrics['num_examples'],
          'step': step, 'weights': restored.weights,
          # Population std (ddof=0): 0 for one member.
          'accuracy_std': float(np.std(metrics['member_accuracy'])),
          'members': members, 'ensemble': metrics['ensemble']}


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
  Figure = errors.require('matplotlib.figure', 'matplotlib',
                          'the confusion matrix plot').Figure
  num_classes = len(class_names)
  fig = Figure(figsize=confusion_figsize(num_classes), dpi=predict.DPI,
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
  return workdir_lib.save_figure(fig, path)


def write_confusion(workdir, split, step, labels, predictions, class_names):
  """Prints per-class accuracy; writes the PNG and JSON. Returns the folder."""
  counts = confusion_matrix(labels, predictions, len(class_names))
  rows = per_class_table(counts, class_names)
  if jax.process_index() != 0:
    return None
  print(format_per_class(rows))
  folder_path = predict.output_dir(workdir, split, step)
  os.makedirs(folder_path, exist_ok=True)
  accuracy = float(np.trace(counts) / counts.sum())
  workdir_lib.write_text(
      os.path.join(folder_path, 'per_class_accuracy.json'),
      json.dumps({'split': split, 'step': step,
                  'num_examples': int(counts.sum()), 'accuracy': accuracy,
                  'classes': rows, 'confusion_matrix': counts.tolist()},
                 indent=1))
  try:
    plot_confusion(counts, class_names,
                   os.path.join(folder_path, 'confusion_matrix.png'),
                   title=f'{split}, step {step}: accuracy {accuracy:.4f}')
  except Exception as e:  # The metrics still count without the picture.
    print(f'warning: confusion matrix plot failed: {type(e).__name__}: {e}',
          file=sys.stderr)
  print(f'per-class accuracy and confusion matrix: {folder_path}/')
  return folder_path
