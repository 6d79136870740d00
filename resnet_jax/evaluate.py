"""--mode=evaluate: a restored checkpoint on a whole split of the data.

Its JSON has the members' mean accuracy and loss, the accuracy's standard
deviation over members, each member's figures and the ensemble's (the
members' averaged probabilities); the confusion matrix is the ensemble's.

Besides the metrics, prints per-class accuracy and writes it, with a
confusion-matrix PNG, to WORKDIR/eval/SPLIT_stepSTEP/. The inference pieces
it shares with --mode=samples and --mode=predict (restoring a checkpoint,
predicting a split, the confusion matrix) live in predict.py, so the
dependency runs one way: evaluate imports predict, never the reverse.
"""
import numpy as np

from resnet_jax import data, predict, train
from resnet_jax import config as config_lib
from resnet_jax.errors import DataError


def evaluate(config, workdir: str, which: str = 'best',
             split: str = 'test') -> dict:
  config_lib.validate(config)
  mesh = train.create_mesh()
  state, step, meta = predict.restore_for_inference(config, workdir, which,
                                                   mesh)
  examples = predict.load_split(config, split)
  names = list(data.class_names(config))
  if names != meta['class_names']:
    raise DataError(f'the data\'s classes {names[:5]}... differ from those '
                    f'checkpoint {step} was trained on '
                    f'{meta["class_names"][:5]}...: accuracy would be wrong')
  normalization = (meta['normalization']['mean'], meta['normalization']['std'])
  if isinstance(examples, data.Split):
    metrics, _, predictions = predict.predict_split(
        state, examples, normalization, config.train.eval_batch_size, mesh,
        config.train.eval_flip)
    labels = examples.labels
  else:  # Too large for memory: streamed from disk.
    metrics, labels, predictions = predict.predict_streamed(
        state, examples, normalization, config.train.eval_batch_size, mesh,
        config.train.eval_flip)
  predict.write_confusion(workdir, split, step, labels, predictions,
                          meta['class_names'])
  members = [{'seed': m['seed'], 'learning_rate': m['learning_rate'],
              'weight_decay': m['weight_decay'], 'accuracy': a, 'loss': l}
             for m, a, l in zip(meta['members'], metrics['member_accuracy'],
                                metrics['member_loss'])]
  return {'split': split, 'accuracy': metrics['accuracy'],
          'loss': metrics['loss'], 'num_examples': metrics['num_examples'],
          'step': step,
          # Population std (ddof=0): 0 for one member.
          'accuracy_std': float(np.std(metrics['member_accuracy'])),
          'members': members, 'ensemble': metrics['ensemble']}
