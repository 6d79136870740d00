"""Weight averaging (train.ema_decay): the formula, per member, exact resume,
what evaluations report and rank, and which weights inference restores (a
skipped non-finite step leaves the average: test_reliability.py)."""
import os

import flax
import jax
import numpy as np
import pytest

from conftest import cli_args, run_cli, tiny_config
from test_cli import assert_one_line_error
from resnet_jax import api, checkpoint, evaluate, inference, models, predict
from resnet_jax import progress
from resnet_jax import reporting, train, train_state
from resnet_jax.errors import CheckpointError, ConfigError

EMA = {'train.ema_decay': 0.9}


def variables(state):
  return jax.device_get({'params': state.params,
                         'batch_stats': state.batch_stats})


def test_average_after_k_steps_equals_the_formula_for_each_member():
  config = tiny_config(**EMA, **{'train.num_seeds': 2})
  mesh = train.create_mesh()
  splits, normalization = train.load_train_val(config, streamed=False)
  state = train_state.create_train_state(config, models.from_config(config),
                                         mesh)
  inputs, train_fn, _ = train.make_inputs(config, splits, normalization, 0,
                                          mesh, streamed=False)
  expected = variables(state)  # The average starts at the initialization.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.ema),
               expected)
  for t in range(4):
    state, _ = train_fn(state, next(inputs))
    raw = variables(state)
    decay = min(0.9, (1 + t) / (10 + t))  # 0.1, 0.18, 0.25, 0.31: warm-up.
    expected = jax.tree.map(
        lambda e, x, d=decay: np.float32(d) * e + np.float32(1 - d) * x,
        expected, raw)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6,
                                                         atol=1e-7),
                 jax.device_get(state.ema), expected)
  kernel = jax.device_get(state.ema['params']['Dense_0']['kernel'])
  assert not np.allclose(kernel[0], kernel[1])  # Each member its own.
  assert not np.allclose(kernel, raw['params']['Dense_0']['kernel'])


def test_off_keeps_todays_train_state_and_on_adds_one_average():
  mesh = train.create_mesh()
  off = tiny_config()
  state = train_state.create_train_state(off, models.from_config(off), mesh)
  assert type(state) is train_state.TrainState
  assert set(flax.serialization.to_state_dict(state)) == {
      'step', 'params', 'batch_stats', 'opt_state'}
  on = tiny_config(**EMA)
  averaged = train_state.create_train_state(on, models.from_config(on), mesh)
  assert set(flax.serialization.to_state_dict(averaged)) == {
      'step', 'params', 'batch_stats', 'opt_state', 'ema'}
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(averaged.ema) == shapes(variables(averaged))
  # Everything else is today's state.
  rest = flax.serialization.to_state_dict(averaged)
  del rest['ema']
  assert shapes(rest) == shapes(flax.serialization.to_state_dict(state))


def test_ranking_metrics_follow_rank_by():
  val = {'member_accuracy': [0.5, 0.7], 'member_loss': [1.0, 2.0],
         'ema': {'member_accuracy': [0.8, 0.9], 'member_loss': [0.5, np.nan]}}
  finite = np.array([True, True])
  assert progress.ranking_metrics(val, finite) == {'val_accuracy': 0.6,
                                                   'val_loss': 1.5}
  assert progress.ranking_metrics({**val, 'rank_by': 'raw'}, finite) == {
      'val_accuracy': 0.6, 'val_loss': 1.5}
  # The averaged weights of member 1 have a non-finite loss: left out.
  assert progress.ranking_metrics({**val, 'rank_by': 'ema'}, finite) == {
      'val_accuracy': 0.8, 'val_loss': 0.5}


@pytest.fixture(scope='module')
def averaged_run(tmp_path_factory):
  """A finished tiny run with weight averaging, ranked by the average."""
  workdir = str(tmp_path_factory.mktemp('averaged'))
  config = tiny_config(**EMA)
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_evaluations_report_both_weights_and_the_average_ranks(averaged_run):
  config, workdir = averaged_run
  evals = [r for r in reporting.read_history(workdir) if 'val_loss' in r]
  assert [r['step'] for r in evals] == [6, 12]
  for record in evals:
    assert record['val_ema_loss'] != record['val_loss']
  manager = checkpoint.create_manager(workdir, read_only=True)
  try:
    kept = [r for r in evals if r['step'] in manager.all_steps()]
    assert kept
    for record in kept:
      assert manager.metrics(record['step']) == {
          'val_accuracy': record['val_ema_accuracy'],
          'val_loss': record['val_ema_loss']}
  finally:
    manager.close()
  report = open(os.path.join(workdir, 'report.md')).read()
  assert 'best validation accuracy, averaged weights' in report
  assert f'{evals[-1]["val_ema_accuracy"]:.4f} / ' in report
  assert "averaged weights' accuracy" in report  # The members table's column.
  del config


def test_inference_uses_the_average_unless_asked_for_the_raw(averaged_run):
  config, workdir = averaged_run
  last = [r for r in reporting.read_history(workdir) if 'val_loss' in r][-1]
  averaged = evaluate.evaluate(config, workdir, 'latest', 'val')
  raw = evaluate.evaluate(config, workdir, 'latest', 'val', weights='raw')
  assert averaged['weights'] == 'ema' and raw['weights'] == 'raw'
  assert averaged['loss'] == pytest.approx(last['val_ema_loss'], rel=1e-6)
  assert raw['loss'] == pytest.approx(last['val_loss'], rel=1e-6)
  for weights, expected in (('auto', 'ema'), ('raw', 'raw')):
    shown = predict.samples(config, workdir, 'latest', 'val', num_samples=4,
                            weights=weights)
    assert shown['weights'] == expected
  model = api.load(workdir, 'latest')
  assert model.weights == 'ema'
  raw_model = api.load(workdir, 'latest', weights='raw')
  assert raw_model.weights == 'raw'
  assert not np.allclose(model.variables['params']['Dense_0']['kernel'],
                         raw_model.variables['params']['Dense_0']['kernel'])


def test_weights_ema_without_an_average_is_one_clear_error(trained_workdir):
  with pytest.raises(ConfigError, match='holds no averaged weights'):
    inference.restore_for_inference(tiny_config(), str(trained_workdir),
                                    weights='ema')
  assert inference.restore_for_inference(
      tiny_config(), str(trained_workdir)).weights == 'raw'
  result = run_cli(cli_args(tiny_config(), trained_workdir, '--mode=evaluate',
                            '--split=val', '--weights=ema'))
  assert_one_line_error(result, 'holds no averaged weights')


def test_resuming_into_another_averaging_setting_is_refused(trained_workdir):
  config = tiny_config(**EMA)
  mesh = train.create_mesh()
  state = train_state.create_train_state(config, models.from_config(config),
                                         mesh)
  manager = checkpoint.create_manager(str(trained_workdir), read_only=True)
  try:
    with pytest.raises(CheckpointError, match='train.ema_decay'):
      checkpoint.restore_or_init(manager, config, state, str(trained_workdir))
  finally:
    manager.close()


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    averaged_run, tmp_path):
  config, straight = averaged_run
  resumed = str(tmp_path / 'resumed')
  train.train_and_evaluate(config, resumed, stop_at_step=5)
  train.train_and_evaluate(config, resumed)
  manager = checkpoint.create_manager
  for weights in ('raw', 'ema'):
    trees = []
    for workdir in (straight, resumed):
      m = manager(workdir, read_only=True)
      try:
        trees.append(jax.device_get(checkpoint.restore_variables(
            m, 12, jax.sharding.NamedSharding(
                train.create_mesh(), jax.sharding.PartitionSpec()), weights)))
      finally:
        m.close()
    jax.tree.map(np.testing.assert_array_equal, *trees)
  # Both weights' last evaluation too (the stop evaluated step 5 as well).
  last = lambda w: [r for r in reporting.read_history(w) if 'val_loss' in r][-1]
  assert last(resumed) == last(straight)

