import jax
import jax.numpy as jnp
import ml_collections
import pytest

from resnet_jax import models


def make(name='resnet', n=3, shortcut='conv', num_classes=10):
  return models.create_model(ml_collections.ConfigDict(dict(
      name=name, num_layers=n, shortcut=shortcut, num_classes=num_classes)))


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
