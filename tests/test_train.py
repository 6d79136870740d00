import functools
import json

import jax
import numpy as np
import pytest

from conftest import tiny_config, cli_args, fake_devices, run_cli
from resnet_jax import checkpoint, evaluate, inference, models, optim
from resnet_jax import reporting, train, train_state


def restore_params(workdir, which='latest'):
  manager = checkpoint.create_manager(workdir, read_only=True)
  step = checkpoint.select_step(manager, which)
  mesh = train.create_mesh()
  variables = checkpoint.restore_variables(
      manager, step, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return step, jax.device_get(variables)


def test_training_learns_and_writes_its_workdir(tmp_path):
  config = tiny_config(**{'train.steps': 40, 'train.eval_every': 20,
                          'train.log_every': 10})
  result = train.train_and_evaluate(config, str(tmp_path))
  history = reporting.read_history(str(tmp_path))
  losses = [r['train_loss'] for r in history if 'train_loss' in r]
  assert losses[-1] < 0.5 * losses[0]
  assert result['val_accuracy'] > 0.6  # 10 classes: chance is 0.1.
  assert [r['step'] for r in history if 'val_accuracy' in r] == [20, 40]
  assert json.load(open(tmp_path / 'config.json'))['model']['num_layers'] == 1
  assert result['images_per_sec'] > 0


def test_checkpoints_keep_latest_best_accuracy_and_best_loss(tmp_path):
  manager = checkpoint.create_manager(str(tmp_path))
  state = {'w': np.zeros(3, np.float32)}
  accuracy = [0.1, 0.9, 0.5, 0.3, 0.2]
  loss = [2.0, 1.5, 1.0, 1.8, 1.9]
  for step, (acc, l) in enumerate(zip(accuracy, loss), start=1):
    checkpoint.save(manager, step, {'w': state['w'] + step}, {'m': step},
                    metrics={'val_accuracy': acc, 'val_loss': l})
  manager.wait_until_finished()
  assert sorted(manager.all_steps()) == [2, 3, 5]
  reader = checkpoint.create_manager(str(tmp_path), read_only=True)
  assert checkpoint.select_step(reader, 'best') == 2
  assert checkpoint.select_step(reader, 'best_loss') == 3
  assert checkpoint.select_step(reader, 'latest') == 5
  assert checkpoint.select_step(reader, '3') == 3
  with pytest.raises(Exception, match='no checkpoint at step 4'):
    checkpoint.select_step(reader, '4')
  with pytest.raises(Exception, match='choose one of best, best_loss, latest'):
    checkpoint.select_step(reader, 'newest')


def test_evaluate_restored_checkpoint_reproduces_validation_metrics(tmp_path):
  result = train.train_and_evaluate(tiny_config(), str(tmp_path))
  evaluated = evaluate.evaluate(tiny_config(), str(tmp_path), 'latest', 'val')
  assert evaluated['step'] == 12
  assert evaluated['num_examples'] == 32  # 20% of 160: every example counted.
  assert evaluated['accuracy'] == pytest.approx(result['val_accuracy'], abs=1e-6)
  assert evaluated['loss'] == pytest.approx(result['val_loss'], rel=1e-5)


def test_test_time_augmentation_averages_mirrors_and_shifts(tmp_path):
  """train.eval_flip: logits are the mean over the image and its mirror, so
  they do not change when the input is mirrored; the run and --mode=evaluate
  agree on it, and it differs from single-view evaluation. With
  train.eval_translate, half that and a quarter each of the same for the
  image shifted both ways diagonally (reflect-padded)."""
  config = tiny_config(**{'train.eval_flip': True, 'train.steps': 6})
  result = train.train_and_evaluate(config, str(tmp_path))
  evaluated = evaluate.evaluate(config, str(tmp_path), 'latest', 'val')
  assert evaluated['loss'] == pytest.approx(result['val_loss'], rel=1e-5)
  single = evaluate.evaluate(tiny_config(), str(tmp_path), 'latest', 'val')
  assert single['loss'] != pytest.approx(evaluated['loss'], rel=1e-5)
  mesh = train.create_mesh()
  state = inference.restore(config, str(tmp_path), 'latest', mesh)[0]
  # eval_step is one member's: the run's only member.
  state = state.replace(
      params=jax.tree.map(lambda x: x[0], state.params),
      batch_stats=jax.tree.map(lambda x: x[0], state.batch_stats))
  images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), np.uint8)
  batch = {'image': images, 'label': np.zeros(4, np.int32),
           'mask': np.ones(4, np.float32)}
  mirrored = {**batch, 'image': images[:, :, ::-1]}
  # Jitted per view setting (op by op takes ~10 s on CPU).
  eval_step = jax.jit(
      functools.partial(inference.eval_step, normalization=([0.5] * 3,
                                                            [0.25] * 3)),
      static_argnames=('flip', 'translate'))
  _, logits = eval_step(state, batch, flip=True)
  _, logits_m = eval_step(state, mirrored, flip=True)
  np.testing.assert_allclose(logits, logits_m, rtol=1e-5, atol=1e-5)
  _, plain = eval_step(state, batch)
  _, plain_m = eval_step(state, mirrored)
  np.testing.assert_allclose(logits, (plain + plain_m) / 2, rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(plain, plain_m, rtol=1e-5, atol=1e-5)
  _, translated = eval_step(state, batch, flip=True, translate=2)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode='reflect')
  shifted = [eval_step(state, {**batch, 'image': view}, flip=True)[1]
             for view in (padded[:, :16, :16], padded[:, 4:, 4:])]
  np.testing.assert_allclose(translated, logits / 2 + shifted[0] / 4
                             + shifted[1] / 4, rtol=1e-5, atol=1e-5)
  assert not np.allclose(translated, logits, rtol=1e-5, atol=1e-5)
  # --mode=evaluate takes it from the config.
  config.train.eval_translate = 2
  both = evaluate.evaluate(config, str(tmp_path), 'latest', 'val')
  assert both['loss'] != pytest.approx(evaluated['loss'], rel=1e-5)


def test_resume_matches_an_uninterrupted_run(tmp_path):
  config = tiny_config()
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  train.train_and_evaluate(config, str(tmp_path / 'resumed'), stop_at_step=5)
  assert restore_params(str(tmp_path / 'resumed'))[0] == 5
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  step_a, a = restore_params(str(tmp_path / 'straight'))
  step_b, b = restore_params(str(tmp_path / 'resumed'))
  assert step_a == step_b == 12
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # The history holds each step once, as if never interrupted.
  steps = [r['step'] for r in reporting.read_history(str(tmp_path / 'resumed'))
           if 'train_loss' in r]
  assert steps == sorted(set(steps)) and steps[-1] == 12


def test_the_epoch_order_is_drawn_once_per_epoch_not_in_the_step():
  """The permutation (two sorts of the whole training set) runs at each
  epoch's first step, in a call of its own; the train step only slices it."""
  # 128 examples: 8 steps per epoch; both members in one jitted step.
  config = tiny_config(**{'train.num_seeds': 2, 'train.member_chunk': 2})
  mesh = train.create_mesh()
  splits, normalization = train.load_train_val(config, streamed=False)
  state = train_state.create_train_state(config, models.from_config(config),
                                         mesh)
  inputs, train_fn, _ = train.make_inputs(config, splits, normalization, 3,
                                          mesh, streamed=False)
  draw, epochs = inputs._draw, []  # pylint: disable=protected-access
  inputs._draw = lambda keys, epoch: epochs.append(epoch) or draw(keys, epoch)  # pylint: disable=protected-access
  steps = [next(inputs) for _ in range(3, 20)]
  assert epochs == [0, 1, 2]  # Steps 3-7, 8-15, 16-19.
  assert steps[0]['order'].shape == (2, 128)  # A permutation per member.
  assert 'stablehlo.sort' in draw.lower(inputs._keys, 0).as_text()  # pylint: disable=protected-access
  step_program = train_fn.lower(state, steps[0]).as_text()
  assert 'stablehlo.sort' not in step_program


@pytest.mark.slow
def test_four_devices_match_one_device(tmp_path):
  """Same global batch on 4 CPU devices: BN statistics over the whole batch."""
  config = tiny_config(**{'train.steps': 6, 'train.eval_every': 6})
  one = run_cli(cli_args(config, tmp_path / 'one'))
  four = run_cli(cli_args(config, tmp_path / 'four'),
                 env=fake_devices(4))
  assert one.returncode == 0 and four.returncode == 0, one.stderr + four.stderr
  _, a = restore_params(str(tmp_path / 'one'))
  _, b = restore_params(str(tmp_path / 'four'))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), a, b)
  assert not np.allclose(  # ...and training did move the parameters.
      a['params']['Dense_0']['kernel'], 0, atol=1e-3)


def test_cosine_schedule_warms_up_then_decays():
  config = tiny_config(**{'train.steps': 100, 'train.warmup_steps': 10,
                          'train.learning_rate': 0.4}).train
  lr = optim.create_schedule(config)
  assert lr(0) == 0 and lr(10) == pytest.approx(0.4)
  assert lr(55) == pytest.approx(0.2, rel=1e-3) and lr(100) == pytest.approx(0)


def test_step_schedule_drops_at_the_boundaries():
  config = tiny_config(**{'train.steps': 100, 'train.warmup_steps': 0,
                          'train.schedule': 'step'}).train
  lr = optim.create_schedule(config)
  assert [float(lr(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_weight_decay_skips_batchnorm_and_biases():
  params = {'Conv_0': {'kernel': np.ones((3, 3, 3, 16))},
            'BatchNorm_0': {'scale': np.ones(16), 'bias': np.zeros(16)},
            'Dense_0': {'kernel': np.ones((16, 10)), 'bias': np.zeros(10)}}
  mask = optim.decay_mask(params)
  assert mask == {'Conv_0': {'kernel': True},
                  'BatchNorm_0': {'scale': False, 'bias': False},
                  'Dense_0': {'kernel': True, 'bias': False}}


def test_bfloat16_run_learns_with_float32_state(tmp_path):
  config = tiny_config(**{'train.steps': 40, 'train.eval_every': 40,
                          'train.dtype': 'bfloat16'})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['val_accuracy'] > 0.6
  _, variables = restore_params(str(tmp_path))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {np.dtype('float32')}
