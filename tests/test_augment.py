"""On-device augmentation: crop and flip toggles, cutout, mixup, CutMix, and
the train step's use of them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from resnet_jax import config as config_lib
from resnet_jax import inference, models, report, reporting, train
from resnet_jax.data import augment, order
from resnet_jax.errors import ConfigError

NORMALIZATION = ([0.5] * 3, [0.25] * 3)


def uint8_images(n=8, size=16, seed=0):
  return jax.random.randint(jax.random.key(seed), (n, size, size, 3), 0, 256
                            ).astype(jnp.uint8)


def test_crop_and_flip_toggles():
  images = uint8_images()
  rng = jax.random.key(3)
  np.testing.assert_array_equal(
      augment.random_crop_flip(rng, images, crop=False, flip=False), images)
  both = augment.random_crop_flip(rng, images)
  assert not np.array_equal(both, images)
  # Each alone is the other's draw left out: flip-only mirrors exactly the
  # images that crop-and-flip mirrors (the same key split as before).
  flipped = augment.random_crop_flip(rng, images, crop=False)
  mirrored = [not np.array_equal(f, x) for f, x in zip(flipped, images)]
  assert 0 < sum(mirrored) < len(images)
  for f, x, m in zip(flipped, images, mirrored):
    np.testing.assert_array_equal(f, x[:, ::-1] if m else x)
  cropped = augment.random_crop_flip(rng, images, flip=False)
  np.testing.assert_array_equal(
      jnp.where(jnp.asarray(mirrored)[:, None, None, None],
                cropped[:, :, ::-1], cropped), both)


def test_augmentation_off_leaves_the_images_untouched():
  images = uint8_images()
  labels = jnp.arange(8) % 10
  off = augment.Augmentation(crop=False, flip=False)
  out, targets = off(jax.random.key(0), images, labels, NORMALIZATION)
  np.testing.assert_array_equal(out, augment.normalize(images, *NORMALIZATION))
  np.testing.assert_array_equal(targets, labels)


def test_cutout_zeroes_exactly_the_patch_it_drew():
  images = jax.random.uniform(jax.random.key(1), (64, 16, 16, 3), minval=0.5,
                              maxval=1.0)  # No zeros of their own.
  rng = jax.random.key(7)
  mask = np.asarray(augment.cutout_mask(rng, images.shape, 6))
  out = np.asarray(augment.cutout(rng, images, 6))
  np.testing.assert_array_equal(out == 0, np.broadcast_to(mask[..., None],
                                                          out.shape))
  np.testing.assert_array_equal(out[~mask], np.asarray(images)[~mask])
  clipped = 0
  for patch in mask:  # One full rectangle, 6 x 6 but where a border clips it.
    rows, cols = np.flatnonzero(patch.any(1)), np.flatnonzero(patch.any(0))
    assert patch.sum() == len(rows) * len(cols)
    assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
    assert np.array_equal(cols, np.arange(cols[0], cols[-1] + 1))
    for side, (first, last) in ((len(rows), (rows[0], rows[-1])),
                                (len(cols), (cols[0], cols[-1]))):
      assert side == 6 or first == 0 or last == 15
      clipped += side < 6
  assert clipped  # Some centres near a border: clipping was exercised.


@pytest.mark.parametrize('alphas', [(1.0, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_sum_to_one(alphas):
  labels = jnp.arange(16) % 10
  for seed in range(5):
    _, targets = augment.mix(jax.random.key(seed), jnp.zeros((16, 8, 8, 3)),
                             labels, 10, *alphas)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert targets.shape == (16, 10)


def distinct_images(n=10, size=16):
  """Image k is constant k + 1: where a pixel came from is readable."""
  return jnp.broadcast_to(jnp.arange(1.0, n + 1)[:, None, None, None],
                          (n, size, size, 3))


def test_mixup_blends_images_and_labels_alike():
  images, labels = distinct_images(), jnp.arange(10)
  out, targets = augment.mix(jax.random.key(2), images, labels, 10,
                             mixup_alpha=1.0)
  out, targets = np.asarray(out), np.asarray(targets)
  own = targets[np.arange(10), np.arange(10)]
  lam = own.min()
  assert 0 < lam < 1
  for k in range(10):
    partners = [j for j in range(10) if j != k and targets[k, j] > 0]
    if not partners:  # Paired with itself: unchanged.
      assert own[k] == 1 and (out[k] == k + 1).all()
      continue
    assert own[k] == pytest.approx(lam)  # One lam per batch.
    np.testing.assert_allclose(out[k], lam * (k + 1) + (1 - lam) * (
        partners[0] + 1), rtol=1e-6)


def test_cutmix_label_weight_is_the_pasted_area_fraction():
  images, labels = distinct_images(), jnp.arange(10)
  checked = 0
  for seed in range(8):
    out, targets = augment.mix(jax.random.key(seed), images, labels, 10,
                               cutmix_alpha=1.0)
    out, targets = np.asarray(out), np.asarray(targets)
    for k in range(10):
      pasted = out[k, :, :, 0] != k + 1
      if not pasted.any():
        continue  # Its partner is itself, or the box was empty.
      partner = int(out[k][pasted][0, 0]) - 1
      assert (out[k][pasted] == partner + 1).all()  # One partner.
      fraction = pasted.mean()
      assert targets[k, k] == pytest.approx(1 - fraction, abs=1e-6)
      assert targets[k, partner] == pytest.approx(fraction, abs=1e-6)
      checked += 1
  assert checked > 10


def test_cross_entropy_takes_soft_targets_with_label_smoothing():
  logits = jax.random.normal(jax.random.key(0), (4, 10))
  labels = jnp.array([1, 2, 3, 4])
  np.testing.assert_allclose(
      inference.cross_entropy(logits, jax.nn.one_hot(labels, 10), 0.1),
      inference.cross_entropy(logits, labels, 0.1), rtol=1e-6)
  soft = 0.3 * jax.nn.one_hot(labels, 10) + 0.7 * jax.nn.one_hot(labels + 1, 10)
  expected = 0.3 * inference.cross_entropy(logits, labels, 0.1) + (
      0.7 * inference.cross_entropy(logits, labels + 1, 0.1))
  np.testing.assert_allclose(inference.cross_entropy(logits, soft, 0.1),
                             expected, rtol=1e-5)


def test_each_member_draws_its_own_and_the_draws_follow_the_step():
  augmentation = augment.Augmentation(cutout_size=4, mixup_alpha=1.0)
  config = tiny_config(**{'train.num_seeds': 2})
  _, keys = order.member_keys(config)
  images, labels = uint8_images(), jnp.arange(8)
  draw = lambda key, step: augmentation(jax.random.fold_in(key, step), images,
                                        labels, NORMALIZATION)
  a, b = draw(keys[0], 3), draw(keys[1], 3)
  assert not np.array_equal(a[0], b[0])
  jax.tree.map(np.testing.assert_array_equal, draw(keys[0], 3), a)
  assert not np.array_equal(draw(keys[0], 4)[0], a[0])


def test_config_validation_of_the_augmentation_keys():
  for key, value in (('data.cutout_size', -1), ('data.cutout_size', 17),
                     ('train.mixup_alpha', -0.5),
                     ('train.cutmix_alpha', -1.0)):
    config = tiny_config(**{key: value})
    with pytest.raises(ConfigError, match=key):
      config_lib.validate(config)


@pytest.mark.slow
def test_a_run_with_every_augmentation_trains_and_resumes_exactly(tmp_path):
  config = tiny_config(**{'data.cutout_size': 8, 'train.mixup_alpha': 1.0,
                          'train.cutmix_alpha': 1.0, 'train.steps': 8,
                          'train.eval_every': 4, 'train.log_every': 2})
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config, straight)
  train.train_and_evaluate(config, resumed, stop_at_step=4)
  train.train_and_evaluate(config, resumed)
  records = lambda w: [{k: v for k, v in r.items() if k != 'images_per_sec'}
                       for r in reporting.read_history(w)]
  assert records(resumed) == records(straight)
  assert all(0 <= r['train_accuracy'] <= 1 for r in records(straight)
             if 'train_accuracy' in r)


def test_report_names_the_augmentation_when_it_is_not_the_default():
  assert report.augmentation_row(tiny_config()) == ''
  assert report.augmentation_row(tiny_config(**{
      'data.cutout_size': 16, 'train.mixup_alpha': 0.2,
      'train.cutmix_alpha': 1.0})) == (
          'crop, flip, cutout 16, mixup alpha 0.2, CutMix alpha 1')
  assert report.augmentation_row(tiny_config(**{
      'data.random_crop': False, 'data.random_flip': False})) == 'none'
