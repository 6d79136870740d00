"""Several members in one run: seeds and learning-rate sweeps, vmapped."""
import jax
import numpy as np
import pytest

from conftest import cli_args, fake_devices, run_cli, snapshot, tiny_config
from test_cli import assert_one_line_error
from test_train import restore_params
from resnet_jax import checkpoint, data, evaluate, inference, models, predict
from resnet_jax import plots, progress, reporting, train, train_state
from resnet_jax.data import order, stream
from resnet_jax.errors import CheckpointError

SHORT = {'train.steps': 6, 'train.eval_every': 6}
# XLA's own convolutions and reductions: with the CPU fast path's YNNPACK
# reductions, a member and its single run sum in different orders, and on
# this tiny net one ReLU flips at step 3 (both losses agree to 1e-7 before;
# after, 1e-3 apart in the momentum). XLA's path keeps them within 1e-7.
EXACT = {'model.conv_impl': 'xla'}
# Three steps without warmup: a member and its single run sum in different
# orders (a vmapped convolution is a grouped one) and agree to ~5e-7 here on
# both jax ends; by step 6 (with 2 warmup steps, by step 3) a ReLU of this
# tiny net flips and they drift 1e-4..1e-3 apart, so longer runs test the
# net's chaos, not the members.
EQUAL = {'train.steps': 3, 'train.eval_every': 3, 'train.warmup_steps': 0}
# Four members: learning rates (0.05, 0.2) x seeds (0, 1), seeds innermost.
SWEEP = {**EQUAL, **EXACT, 'train.num_seeds': 2,
         'train.sweep_learning_rates': (0.05, 0.2)}


def member(tree, k):
  return jax.tree.map(lambda x: x[k], tree)


@pytest.fixture(scope='module')
def sweep_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sweep')
  train.train_and_evaluate(tiny_config(**SWEEP), str(workdir))
  return workdir


@pytest.mark.slow  # Whole runs: out of the edit loop, toward its 5 minutes.
def test_each_member_is_the_single_run_of_its_seed_and_rate(sweep_workdir,
                                                            tmp_path):
  step, swept = restore_params(str(sweep_workdir))
  assert step == 3
  assert jax.tree.leaves(swept)[0].shape[0] == 4
  for k, overrides in ((0, {'seed': 0, 'train.learning_rate': 0.05}),
                       (3, {'seed': 1, 'train.learning_rate': 0.2})):
    single = str(tmp_path / str(k))
    train.train_and_evaluate(tiny_config(**EQUAL, **EXACT, **overrides),
                             single)
    _, alone = restore_params(single)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(
        x, y, rtol=1e-5, atol=2e-6), member(swept, k), member(alone, 0))
  # The members differ: their seeds and rates did something.
  assert not np.allclose(swept['params']['Dense_0']['kernel'][0],
                         swept['params']['Dense_0']['kernel'][1])
  assert not np.allclose(swept['params']['Dense_0']['kernel'][0],
                         swept['params']['Dense_0']['kernel'][2])
  # Each member's hyperparameters are in the checkpoint's record.
  manager = checkpoint.create_manager(str(sweep_workdir), read_only=True)
  meta = checkpoint.restore_meta(manager, 3, tiny_config(**SWEEP))
  assert [(m['seed'], m['learning_rate']) for m in meta['members']] == [
      (0, 0.05), (1, 0.05), (0, 0.2), (1, 0.2)]


@pytest.mark.slow
def test_multi_member_resume_matches_an_uninterrupted_run(tmp_path):
  config = tiny_config(**{'train.num_seeds': 2})
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  train.train_and_evaluate(config, str(tmp_path / 'resumed'), stop_at_step=5)
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  step_a, a = restore_params(str(tmp_path / 'straight'))
  step_b, b = restore_params(str(tmp_path / 'resumed'))
  assert step_a == step_b == 12
  jax.tree.map(np.testing.assert_array_equal, a, b)
  history = reporting.read_history(str(tmp_path / 'resumed'))
  last = history[-1]
  assert last['val_accuracy'] == pytest.approx(
      (last['val_accuracy_member0'] + last['val_accuracy_member1']) / 2)
  # Another number of members than the checkpoint's: refused.
  with pytest.raises(CheckpointError, match='holds 2 member'):
    train.train_and_evaluate(tiny_config(**{'train.num_seeds': 3}),
                             str(tmp_path / 'resumed'))


def test_a_checkpoint_from_before_members_is_refused_untouched(tmp_path):
  """Checkpoints written before runs had members (one model without a member
  axis, no 'members' record) are no longer read: resuming and evaluating one
  end with a CheckpointError naming it, and its files stay as they were."""
  config = tiny_config(**SHORT)
  old = str(tmp_path / 'old')
  train.train_and_evaluate(config, old, stop_at_step=3)
  # Rewrite checkpoint 3 as the code before members wrote it.
  manager = checkpoint.create_manager(old)
  mesh = train.create_mesh()
  state = checkpoint.restore_state(manager, 3, train_state.create_train_state(
      config, models.from_config(config), mesh))
  meta = checkpoint.restore_meta(manager, 3, config)
  del meta['members']
  single = member(state.replace(opt_state=state.opt_state.inner_state), 0)
  manager.delete(3)
  checkpoint.save(manager, 3, single, meta, metrics={'val_accuracy': 0.0,
                                                     'val_loss': 9.0})
  manager.wait_until_finished()
  manager.close()
  before = snapshot(old)
  for action in (lambda: train.train_and_evaluate(config, old),
                 lambda: evaluate.evaluate(config, old, 'latest', 'val')):
    with pytest.raises(CheckpointError,
                       match='checkpoint 3 .* written before runs had members'):
      action()
  after = snapshot(old)
  assert {p: v for p, v in after.items() if '/checkpoints/' in p} == {
      p: v for p, v in before.items() if '/checkpoints/' in p}


def test_evaluate_reports_members_their_mean_and_the_ensemble(sweep_workdir):
  config = tiny_config(**SWEEP)
  report = evaluate.evaluate(config, str(sweep_workdir), 'latest', 'val')
  assert [(m['seed'], m['learning_rate'], m['weight_decay'])
          for m in report['members']] == [
              (0, 0.05, 5e-4), (1, 0.05, 5e-4), (0, 0.2, 5e-4), (1, 0.2, 5e-4)]
  mesh = train.create_mesh()
  state, _, meta = inference.restore(config, str(sweep_workdir), 'latest',
                                     mesh)
  split = inference.load_split(config, 'val')
  normalization = (meta['normalization']['mean'], meta['normalization']['std'])
  probabilities = []
  for k, figures in enumerate(report['members']):
    alone, _ = inference.select_member(state, meta, k)
    metrics, p, _ = inference.predict_split(alone, split, normalization, 20,
                                            mesh)
    assert figures['accuracy'] == pytest.approx(metrics['accuracy'], abs=1e-6)
    assert figures['loss'] == pytest.approx(metrics['loss'], rel=1e-5)
    probabilities.append(p)
  accuracies = [m['accuracy'] for m in report['members']]
  assert report['accuracy'] == pytest.approx(np.mean(accuracies))
  assert report['loss'] == pytest.approx(
      np.mean([m['loss'] for m in report['members']]))
  assert report['accuracy_std'] == pytest.approx(np.std(accuracies))
  averaged = np.mean(probabilities, 0)
  assert report['ensemble']['accuracy'] == pytest.approx(
      np.mean(averaged.argmax(-1) == split.labels), abs=1e-6)
  assert report['ensemble']['loss'] == pytest.approx(
      -np.mean(np.log(averaged[np.arange(len(split)), split.labels])),
      rel=1e-4)


def test_a_diverged_member_is_frozen_and_the_others_go_on(tmp_path, capsys):
  config = tiny_config(**SHORT, **{'train.sweep_learning_rates': (0.1, 1e4)})
  result = train.train_and_evaluate(config, str(tmp_path / 'one'))
  assert result['step'] == 6
  err = capsys.readouterr().err
  assert 'member 1 (seed 0, learning rate 10000, weight decay 0.0005) ' \
         'diverged' in err
  assert [m['frozen'] for m in result['members']] == [False, True]
  assert result['members'][0]['val_loss'] is not None
  manager = checkpoint.create_manager(str(tmp_path / 'one'), read_only=True)
  meta = checkpoint.restore_meta(manager, 6, config)
  assert [m['frozen'] for m in meta['members']] == [False, True]
  _, variables = restore_params(str(tmp_path / 'one'))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
  # When every member has diverged, the run stops.
  with pytest.raises(progress.TrainingDiverged, match='every member diverged'):
    train.train_and_evaluate(
        tiny_config(**SHORT, **{'train.sweep_learning_rates': (1e4, 2e4)}),
        str(tmp_path / 'all'))


def test_samples_use_the_ensemble_or_one_member(sweep_workdir):
  config = tiny_config(**SWEEP)
  ensemble = predict.samples(config, str(sweep_workdir), 'latest', 'val', 4)
  assert len(ensemble['members']) == 4
  alone = [predict.samples(config, str(sweep_workdir), 'latest', 'val', 4,
                           member=k) for k in (0, 3)]
  assert [a['members'][0]['learning_rate'] for a in alone] == [0.05, 0.2]
  with pytest.raises(Exception, match='--member=4 is not valid'):
    predict.samples(config, str(sweep_workdir), 'latest', 'val', 4, member=4)


@pytest.mark.slow
def test_members_sharded_over_four_devices_match_one_device(tmp_path):
  """train.shard_members: a 2-D mesh, each device trains whole members."""
  config = tiny_config(**SHORT, **{'train.num_seeds': 4})
  train.train_and_evaluate(config, str(tmp_path / 'one'))
  four = fake_devices(4)
  sharded = tiny_config(**SHORT, **{'train.num_seeds': 4,
                                    'train.shard_members': True})
  result = run_cli(cli_args(sharded, tmp_path / 'four'), env=four)
  assert result.returncode == 0, result.stderr[-2000:]
  _, a = restore_params(str(tmp_path / 'one'))
  _, b = restore_params(str(tmp_path / 'four'))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      x, y, rtol=1e-4, atol=1e-5), a, b)
  three = tiny_config(**{'train.num_seeds': 3, 'train.shard_members': True})
  result = run_cli(cli_args(three, tmp_path / 'three'), env=four)
  assert_one_line_error(result, 'train.shard_members needs a multiple of the '
                        '4 devices as members, not 3')


def test_history_report_and_plots_carry_each_member(sweep_workdir):
  history = reporting.read_history(str(sweep_workdir))
  val = [r for r in history if 'val_accuracy' in r][-1]
  figures = [val[f'val_accuracy_member{k}'] for k in range(4)]
  assert val['val_accuracy'] == pytest.approx(np.mean(figures))
  assert val['val_accuracy_std'] == pytest.approx(np.std(figures))
  rates = [r for r in history if 'train_loss' in r][-1]
  assert rates['train_learning_rate_member0'] == pytest.approx(
      rates['train_learning_rate_member2'] / 4)  # 0.05 and 0.2.
  assert plots.member_keys(history, 'val_loss') == [
      f'val_loss_member{k}' for k in range(4)]
  header = (sweep_workdir / 'metrics.csv').read_text().splitlines()[0]
  assert 'train_loss_member3' in header and 'val_accuracy_std' in header
  report = (sweep_workdir / 'report.md').read_text()
  assert '## Members' in report
  assert '| 3 | 1 | 0.2 | 0.0005 | ' in report
  assert 'peak learning rate 0.05, 0.2 (swept)' in report
  for name in ('loss.png', 'accuracy.png'):
    assert (sweep_workdir / 'plots' / name).stat().st_size > 0


@pytest.mark.slow
def test_member_chunks_equal_the_all_vmapped_step():
  """train.member_chunk: C members vmapped at a time (3 of 4 leaves a chunk
  of 1), the chunks in turn; the same step as all members at once (a chunk
  of 4), in memory and streamed. 0 (auto) is 1 on the CPU backend."""
  config = tiny_config(**EQUAL, **EXACT, **{
      'train.num_seeds': 2, 'train.sweep_learning_rates': (0.05, 0.2)})
  mesh = train.create_mesh()
  split = data.load_splits(config, ('train',))['train']
  train_data = train.put_replicated(
      {'image': split.images, 'label': split.labels}, mesh)
  normalization = data.channel_stats(split.images)
  final = {}
  for chunk in (4, 1, 3):
    config.train.member_chunk = chunk
    state = train_state.create_train_state(config, models.from_config(config),
                                     mesh)
    assert train.member_chunk_auto(config) == 1  # What 0 would be here.
    step = train.make_train_fn(config, mesh, normalization)
    inputs = order.EpochOrders(train_data, order.member_keys(config)[0],
                               config.train.batch_size, 0,
                               train.member_sharding(mesh))
    for _ in range(3):
      state, metrics = step(state, next(inputs))
    final[chunk] = jax.device_get((state.params, metrics['loss']))
  # Streamed: each step's batches come from the host, sliced per chunk too.
  config.data.streaming = 'on'
  state = train_state.create_train_state(config, models.from_config(config),
                                         mesh)
  step = train.make_train_fn(config, mesh, normalization, streamed=True)
  batches = stream.TrainBatches(stream.open_split(config, 'train'), config, 0,
                                mesh)
  for _ in range(3):
    state, metrics = step(state, next(batches))
  batches.close()
  final['streamed'] = jax.device_get((state.params, metrics['loss']))
  for chunk in (1, 3, 'streamed'):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(
        x, y, rtol=1e-5, atol=2e-6), final[4], final[chunk])
  # The members did differ (seeds and rates), so nothing was shared.
  assert len(set(np.round(final[1][1], 6))) == 4
