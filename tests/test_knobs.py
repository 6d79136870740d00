"""The optimizer's switches (train.nesterov, train.grad_clip_norm) and
training on every training image (data.val_fraction=0)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import snapshot, tiny_config
from resnet_jax import config as config_lib
from resnet_jax import checkpoint, data, evaluate, optim, reporting, train
from resnet_jax.data import stream
from resnet_jax.errors import CheckpointError, DataError
from resnet_jax.workdir import LOCK_FILE

PARAMS = {'kernel': jnp.arange(6.0).reshape(2, 3) / 10, 'bias': jnp.ones(3)}


def grads(k):
  return jax.tree.map(lambda p: jnp.sin(p * (k + 1) + k), PARAMS)


def run(tx, steps=3):
  """The updates of `steps` steps of `tx` and its final state."""
  state, updates, update_fn = tx.init(PARAMS), [], jax.jit(tx.update)
  for k in range(steps):
    update, state = update_fn(grads(k), state, PARAMS)
    updates.append(update)
  return updates, state


def norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree))))


def constant_rate(**overrides):
  """A train config whose learning rate is train.learning_rate throughout."""
  train_config = config_lib.base_config().train
  train_config.update(schedule='step', step_boundaries=(), warmup_steps=0,
                      weight_decay=0.0, **overrides)
  return train_config


def test_the_default_optimizer_is_todays_chain():
  # Today's optimizer, written out: weight decay on kernels, then SGD with
  # Nesterov momentum, rate and decay injectable. The defaults must build
  # exactly it: the same state tree (checkpoints) and the same updates.
  train_config = config_lib.base_config().train
  shape = optim.create_schedule(train_config, peak=1.0)
  today = optax.inject_hyperparams(lambda learning_rate, weight_decay: optax.chain(
      optax.add_decayed_weights(weight_decay, optim.decay_mask),
      optax.sgd(lambda step: learning_rate * shape(step),
                momentum=train_config.momentum, nesterov=True)))(
                    learning_rate=train_config.learning_rate,
                    weight_decay=train_config.weight_decay)
  updates, state = run(optim.create_optimizer(train_config), steps=1500)
  expected_updates, expected_state = run(today, steps=1500)
  assert jax.tree.structure(state) == jax.tree.structure(expected_state)
  jax.tree.map(np.testing.assert_array_equal, (updates[-3:], state),
               (expected_updates[-3:], expected_state))


@pytest.mark.parametrize('nesterov', [True, False])
def test_nesterov_or_plain_momentum(nesterov):
  lr, m = 0.1, 0.9
  updates, _ = run(optim.create_optimizer(constant_rate(nesterov=nesterov)))
  trace = jax.tree.map(jnp.zeros_like, PARAMS)
  for k in range(3):  # PyTorch's SGD: v = m v + g; step g + m v or v.
    trace = jax.tree.map(lambda v, g: m * v + g, trace, grads(k))
    step = (jax.tree.map(lambda g, v: g + m * v, grads(k), trace)
            if nesterov else trace)
    jax.tree.map(lambda u, s: np.testing.assert_allclose(u, -lr * s, rtol=1e-6),
                 updates[k], step)


def test_gradient_clipping_by_global_norm():
  lr, clip = 0.1, 0.5
  big = jax.tree.map(lambda p: 100 * jnp.ones_like(p), PARAMS)
  small = jax.tree.map(lambda p: 1e-3 * jnp.ones_like(p), PARAMS)
  tx = optim.create_optimizer(constant_rate(nesterov=False, momentum=0.0,
                                            grad_clip_norm=clip))
  state = tx.init(PARAMS)
  update, state = tx.update(big, state, PARAMS)
  assert norm(update) == pytest.approx(lr * clip, rel=1e-6)
  update, _ = tx.update(small, state, PARAMS)  # Below the norm: untouched.
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -lr * g, rtol=1e-6),
               update, small)
  # The learning rate and decay stay injectable behind the clipping.
  state = optim.with_hyperparams(state, 0.25, 0.0)
  assert optim.learning_rate(state, constant_rate(), 0) == 0.25
  # Off, nothing is chained: the state is the unclipped optimizer's.
  off = optim.create_optimizer(constant_rate(nesterov=False, momentum=0.0))
  assert jax.tree.structure(off.init(PARAMS)) == jax.tree.structure(
      tx.init(PARAMS)[1])


@pytest.mark.slow
def test_clipping_trains_resumes_and_is_not_switched_on_a_resume(tmp_path):
  short = {'train.steps': 2, 'train.eval_every': 2, 'train.warmup_steps': 0,
           'train.nesterov': False}
  clipped = tiny_config(**short, **{'train.grad_clip_norm': 1.0})
  train.train_and_evaluate(clipped, str(tmp_path), stop_at_step=1)
  before = snapshot(tmp_path)
  unclipped = tiny_config(**short)
  with pytest.raises(CheckpointError, match='written with gradient clipping '
                     'on; set train.grad_clip_norm > 0 to resume it'):
    train.train_and_evaluate(unclipped, str(tmp_path))
  after = snapshot(tmp_path)  # Nothing moved aside or lost.
  lock = str(tmp_path / LOCK_FILE)
  assert after.pop(lock)[0] == before.pop(lock)[0]
  assert after == before
  summary = train.train_and_evaluate(clipped, str(tmp_path))
  assert summary['step'] == 2 and np.isfinite(summary['val_loss'])


def test_every_training_image_trains_and_the_test_split_reports(
    tmp_path, cifar_dir, capsys):
  folder, arrays = cifar_dir  # 7 + 5 + 1 training images, 3 test images.
  config = tiny_config(**{
      'data.source': 'cifar10_binary', 'data.dir': str(folder),
      'data.image_size': 32, 'data.val_fraction': 0.0, 'train.batch_size': 4,
      'train.steps': 4, 'train.warmup_steps': 0, 'train.eval_every': 2,
      'train.log_every': 2})
  splits = data.load_splits(config, ('train', 'test'))
  assert len(splits['train']) == 13 and len(splits['test']) == 3
  assert len(stream.open_split(config, 'train')) == 13  # Streamed, the same.
  with pytest.raises(DataError, match='data.val_fraction=0 leaves no '
                     'validation split'):
    data.load_splits(config, ('val',))
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['step'] == 4 and summary['val_accuracy'] is None
  assert summary['members'][0]['val_accuracy'] is None
  history = reporting.read_history(str(tmp_path))
  assert [r['step'] for r in history] == [2, 4]  # Training records only.
  assert not any(k.startswith('val') for r in history for k in r)
  assert 'validation | none: data.val_fraction=0' in (
      tmp_path / 'report.md').read_text()
  assert 'warning' not in capsys.readouterr().err  # Plots, TensorBoard drawn.
  assert (tmp_path / 'plots' / 'loss.png').exists()
  # No validation to rank by: 'best' is the latest checkpoint.
  manager = checkpoint.create_manager(str(tmp_path), read_only=True)
  assert manager.all_steps() == [4]
  assert checkpoint.select_step(manager, 'best') == 4
  report = evaluate.evaluate(config, str(tmp_path), 'best', 'test')
  assert (report['split'], report['step'], report['num_examples']) == (
      'test', 4, 3)
  # Without a test split (as the local CIFAR-10 folder): one clear line.
  os.remove(folder / 'test_batch.bin')
  with pytest.raises(DataError, match=r"split 'test' asked for, but .* has "
                     r'no test_batch.bin$'):
    evaluate.evaluate(config, str(tmp_path), 'best', 'test')
