"""The Wide ResNet and the pre-activation ResNet-18 through every mode, with
members: train, resume, evaluate, samples, predict, the Python API, reports
and compare. Tiny (8x8 images, one block a stage, 2 steps): the real sizes
are too heavy for CPU tests (their parameter counts: test_models.py)."""
import functools

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import tiny_config
from test_train import restore_params
from resnet_jax import api, compare, evaluate, models, optim, predict, train
from resnet_jax import train_state
from resnet_jax.errors import CheckpointError

TINY = {'data.image_size': 8, 'train.steps': 2, 'train.warmup_steps': 0,
        'train.eval_every': 2, 'train.log_every': 1, 'train.num_seeds': 2}
MODELS = {
    # Dropout on: each member draws its own masks, and a resume redraws them.
    'wrn': ({'model.name': 'wrn', 'model.num_layers': 1,
             'model.width_factor': 2, 'model.dropout': 0.3},
            'WRN-10-2, dropout 0.3', 10),
    'preact_resnet': ({'model.name': 'preact_resnet', 'model.num_layers': 1},
                      'PreAct ResNet-10', 10),
}


@pytest.mark.slow  # ~80 s each on 2 cores.
@pytest.mark.parametrize('name', MODELS)
def test_model_in_every_mode_with_members(tmp_path, name):
  overrides, title, depth = MODELS[name]
  config = tiny_config(**TINY, **overrides)
  workdir = str(tmp_path / 'resumed')
  train.train_and_evaluate(config, workdir, stop_at_step=1)
  resumed = train.train_and_evaluate(config, workdir)
  step, params = restore_params(workdir)
  assert step == 2 and len(resumed['members']) == 2
  if name == 'wrn':  # Dropout: a resume must draw the masks again alike.
    straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
    jax.tree.map(np.testing.assert_array_equal, params,
                 restore_params(str(tmp_path / 'straight'))[1])
    assert resumed['val_loss'] == straight['val_loss']
  # The members differ (their seeds, and for the WRN their dropout draws).
  kernel = jax.tree.leaves(params['params'])[0]
  assert not np.array_equal(kernel[0], kernel[1])

  report = evaluate.evaluate(config, workdir, 'latest', 'test')
  assert report['num_examples'] == 160 and len(report['members']) == 2
  shown = predict.samples(config, workdir, 'best', 'val', num_samples=3)
  assert len(shown['samples']) == 3
  image = tmp_path / 'one.png'
  Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(image)
  [predicted] = predict.predict(config, workdir, 'latest', str(image))
  assert len(predicted['top']) == 5

  model = api.load(workdir, 'latest')
  assert repr(model).startswith(f'Classifier({title}, step 2')
  assert f'| model | {title}, 10 classes |' in (
      tmp_path / 'resumed' / 'report.md').read_text()
  run = compare.load_run(workdir)
  compare.set_labels([run], None)
  row = compare.table_row(run)
  assert row[:3] == [f'{run.model.kind.lower()}-{depth}', run.model.family,
                     str(depth)]
  assert row[3] == f'{resumed["num_params"]:,}'

  if name == 'wrn':  # Another width is another architecture.
    wider = tiny_config(**TINY, **{**overrides, 'model.width_factor': 3})
    with pytest.raises(CheckpointError,
                       match=r'model.width_factor=2 \(config: 3\)'):
      evaluate.evaluate(wider, workdir, 'latest', 'test')


@pytest.mark.slow
def test_train_step_gives_dropout_its_own_key():
  config = tiny_config(**{'data.image_size': 8, 'model.name': 'wrn',
                          'model.num_layers': 1})
  batch = {'image': np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3),
                                                      dtype=np.uint8),
           'label': np.arange(8, dtype=np.int32) % 10}

  def losses(dropout):
    """The loss of one step, twice, from the same parameters and key."""
    config.model.dropout = dropout
    model = models.from_config(config)
    variables = model.init(jax.random.key(0), np.zeros((1, 8, 8, 3)))
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        batch_stats=variables['batch_stats'],
        tx=optim.create_optimizer(config.train))
    step = jax.jit(functools.partial(
        train.train_step, normalization=([0.5] * 3, [0.25] * 3),
        label_smoothing=0.0, train_config=config.train))
    return [float(step(state, batch, jax.random.key(1))[1]['loss'])
            for _ in range(2)]

  # Dropout changes the loss, and the same key draws the same masks again.
  with_dropout, without = losses(0.5), losses(0.0)
  assert with_dropout[0] == with_dropout[1] != without[0]
