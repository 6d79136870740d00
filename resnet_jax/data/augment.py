"""On-device, per-example augmentation and normalization (pure functions)."""
import jax
import jax.numpy as jnp


def random_crop_flip(rng, images, pad: int = 4):
  """Zero-pads by `pad`, crops back at a random offset, flips half the images.

  He et al.'s CIFAR augmentation, drawn independently for every example.
  """
  n, h, w, c = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * pad + 1)
  crop = lambda image, yx: jax.lax.dynamic_slice(image, (yx[0], yx[1], 0),
                                                 (h, w, c))
  images = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(flip_rng, 0.5, (n, 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def normalize(images, mean, std):
  """uint8 images to float32, per channel: (x / 255 - mean) / std."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std
