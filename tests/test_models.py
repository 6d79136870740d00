import runpy

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from conftest import REPO
from resnet_jax import config as config_lib
from resnet_jax import models
from resnet_jax.errors import ConfigError


def make(name='resnet', n=3, shortcut='conv', num_classes=10, width_factor=1,
         dropout=0.0):
  return models.create_model(ml_collections.ConfigDict(dict(
      name=name, num_layers=n, shortcut=shortcut, num_classes=num_classes,
      width_factor=width_factor, dropout=dropout)))


def param_count(model, shape=(1, 32, 32, 3)):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return sum(p.size for p in jax.tree.leaves(variables['params']))


# He et al. 2015, Table 6: ResNet-20/32/44/56/110.
@pytest.mark.parametrize('n,published', [
    (3, 0.27e6), (5, 0.46e6), (7, 0.66e6), (9, 0.85e6), (18, 1.7e6)])
@pytest.mark.parametrize('shortcut', models.SHORTCUTS)
def test_parameter_counts_match_he_et_al(n, published, shortcut):
  count = param_count(make(n=n, shortcut=shortcut))
  assert abs(count - published) / published < 0.02, count


def test_zeropad_shortcut_has_no_parameters():
  zeropad = param_count(make(shortcut='zeropad'))
  # The plain CNN has no shortcut at all: same parameters as option A.
  assert zeropad == param_count(make(name='cnn'))
  # Option B adds a 1x1 conv + BN at the two downsampling blocks.
  projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
  assert param_count(make(shortcut='conv')) - zeropad == projections


@pytest.mark.parametrize('name,shortcut', [
    ('resnet', 'conv'), ('resnet', 'zeropad'), ('cnn', 'conv')])
def test_output_shapes_and_train_mode(name, shortcut):
  model = make(name=name, n=1, shortcut=shortcut, num_classes=7)
  x = jnp.ones((2, 24, 24, 1))  # Grayscale, another size, 7 classes.
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (2, 7)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=['batch_stats'])
  assert logits.shape == (2, 7)
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(
      variables['batch_stats'])


def test_plain_cnn_differs_from_resnet_only_by_the_skip():
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  resnet, cnn = make(n=1, shortcut='zeropad'), make(name='cnn', n=1)
  variables = resnet.init(jax.random.key(0), x)
  # Same parameter tree, different function: the skip connections matter.
  assert jax.tree.structure(variables) == jax.tree.structure(
      cnn.init(jax.random.key(0), x))
  assert not jnp.allclose(resnet.apply(variables, x), cnn.apply(variables, x))


def test_bfloat16_computation_keeps_float32_params():
  model = models.create_model(ml_collections.ConfigDict(dict(
      name='resnet', num_layers=1, shortcut='conv', num_classes=10)),
      dtype=jnp.bfloat16)
  x = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  assert model.apply(variables, x).dtype == jnp.float32


@pytest.mark.parametrize('field,value', [('name', 'vgg'), ('shortcut', 'bad')])
def test_unknown_names_are_rejected_with_choices(field, value):
  cfg = dict(name='resnet', num_layers=1, shortcut='conv', num_classes=10)
  cfg[field] = value
  with pytest.raises(ValueError, match='choose one of'):
    models.create_model(ml_collections.ConfigDict(cfg))


# Zagoruyko & Komodakis 2016, Table (CIFAR): WRN-28-10 36.5M, WRN-16-8 11.0M.
@pytest.mark.parametrize('n,k,published', [(4, 10, 36.5e6), (2, 8, 11.0e6)])
def test_wide_resnet_parameter_counts_match_the_paper(n, k, published):
  count = param_count(make(name='wrn', n=n, width_factor=k))
  assert round(count / 1e5) * 1e5 == published, count


def test_preact_resnet18_parameter_count():
  # kuangliu/pytorch-cifar's PreActResNet18 on CIFAR-10, counted by hand:
  #   stem 3x3x3x64                                            1,728
  #   a block of c channels: 2 BN (2c each) + 2 convs (9c^2)   18c^2 + 4c
  #   stage 1 (64): 2 blocks                                 147,968
  #   stage c in 128, 256, 512 (input c/2): first block BN(c/2) + 9(c/2)c
  #     + BN(c) + 9c^2 + 1x1 shortcut (c/2)c, then one block of c:
  #     525,184 + 2,098,944 + 8,392,192
  #   classifier 512x10 + 10                                     5,130
  #   total                                                 11,171,146
  assert param_count(make(name='preact_resnet', n=2)) == 11_171_146


@pytest.mark.parametrize('name,k', [('wrn', 2), ('preact_resnet', 1)])
def test_new_models_shapes_and_train_mode(name, k):
  model = make(name=name, n=1, num_classes=7, width_factor=k)
  x = jnp.ones((2, 8, 8, 1))  # Grayscale, 8x8, 7 classes.
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (2, 7)
  logits, updates = model.apply(variables, x, train=True,
                                mutable=['batch_stats'])
  assert logits.shape == (2, 7)
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(
      variables['batch_stats'])


def test_wrn_width_factor_widens_every_stage():
  variables = jax.eval_shape(lambda: make(name='wrn', n=1, width_factor=3).init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  widths = sorted({k.shape[-1] for k in jax.tree.leaves(variables['params'])
                   if k.ndim == 4})
  assert widths == [16, 48, 96, 192]  # The stem's 16, then 16k, 32k, 64k.


def test_dropout_draws_from_the_dropout_key_in_training_only():
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  model = make(name='wrn', n=1, width_factor=1, dropout=0.5)
  variables = model.init(jax.random.key(0), x)
  train = lambda key: model.apply(variables, x, train=True,
                                  mutable=['batch_stats'],
                                  rngs={'dropout': key})[0]
  assert not jnp.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
  with pytest.raises(Exception, match='dropout'):  # It needs the key.
    model.apply(variables, x, train=True, mutable=['batch_stats'])
  # Evaluation is deterministic, and rate 0 draws nothing: no key needed.
  assert jnp.allclose(model.apply(variables, x), model.apply(variables, x))
  no_dropout = make(name='wrn', n=1, width_factor=1)
  no_dropout.apply(variables, x, train=True, mutable=['batch_stats'])


@pytest.mark.parametrize('name,n,extra,title,depth', [
    ('resnet', 3, {}, 'ResNet-20 (conv shortcuts)', 20),
    ('cnn', 9, {}, 'plain CNN, 56 layers', 56),
    ('wrn', 4, {'width_factor': 10}, 'WRN-28-10', 28),
    ('wrn', 2, {'width_factor': 8, 'dropout': 0.3}, 'WRN-16-8, dropout 0.3', 16),
    ('preact_resnet', 2, {}, 'PreAct ResNet-18', 18),
    ('mlp', 1, {}, 'mlp', None),  # A model registered without a description.
])
def test_every_model_is_described_by_its_own_depth_rule(name, n, extra, title,
                                                        depth):
  model = config_lib.base_config().model
  model.update(name=name, num_layers=n, **extra)
  described = models.describe(model)
  assert (described.title, described.depth) == (title, depth)


@pytest.mark.parametrize('config_file,name,params', [
    ('wrn28_10', 'WRN-28-10', 36_479_194), ('wrn16_8', 'WRN-16-8', 10_961_370),
    ('preact_resnet18', 'PreAct ResNet-18', 11_171_146)])
def test_model_configs(config_file, name, params):
  config = runpy.run_path(f'{REPO}/configs/{config_file}.py')['get_config']()
  config_lib.validate(config)
  assert models.describe(config.model).title == name
  assert param_count(models.from_config(config)) == params


@pytest.mark.parametrize('name,key,value', [
    ('resnet', 'width_factor', 2), ('preact_resnet', 'dropout', 0.3),
    ('wrn', 'dropout', 1.0), ('wrn', 'width_factor', 0)])
def test_wrn_keys_are_validated(name, key, value):
  config = config_lib.base_config()
  config.model.name = name
  config.model[key] = value
  with pytest.raises(ConfigError, match=f'model.{key}'):
    config_lib.validate(config)
