"""On-device, per-example augmentation and normalization (pure functions).

Training's augmentation (Augmentation) runs inside the jitted step, drawn
from the member's key for the step: crop and flip from the key itself (as
they always were), cutout and mixing from keys folded in with constants of
their own, so that switching them on leaves the crop and flip draws as
they are.
"""
import dataclasses

import jax
import jax.numpy as jnp

# jax.random.fold_in constants: keys of their own off the step's key (crop
# and flip draw from the step's key itself).
CUTOUT_KEY, MIX_KEY, DROPOUT_KEY = 1, 2, 3


def random_crop_flip(rng, images, pad: int = 4, crop: bool = True,
                     flip: bool = True):
  """Zero-pads by `pad`, crops back at a random offset, flips half the images.

  He et al.'s CIFAR augmentation, drawn independently for every example;
  `crop` or `flip` False leaves that part out (the other's draws unchanged).
  """
  n, h, w, c = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  if crop:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * pad + 1)
    crop_at = lambda image, yx: jax.lax.dynamic_slice(image, (yx[0], yx[1], 0),
                                                      (h, w, c))
    images = jax.vmap(crop_at)(padded, offsets)
  if flip:
    flipped = jax.random.bernoulli(flip_rng, 0.5, (n, 1, 1, 1))
    images = jnp.where(flipped, images[:, :, ::-1], images)
  return images


def normalize(images, mean, std):
  """uint8 images to float32, per channel: (x / 255 - mean) / std."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def box_mask(top, bottom, left, right, height: int, width: int):
  """(..., height, width) True on rows [top, bottom) and columns [left,
  right); the bounds (...,) may be traced (no dynamic shapes)."""
  rows = jnp.arange(height)
  cols = jnp.arange(width)
  inside_rows = (rows >= top[..., None]) & (rows < bottom[..., None])
  inside_cols = (cols >= left[..., None]) & (cols < right[..., None])
  return inside_rows[..., :, None] & inside_cols[..., None, :]


def centred_box(centre_y, centre_x, box_h, box_w, height: int, width: int):
  """(top, bottom, left, right) of a box_h x box_w box around the centre
  (top-left at centre - side // 2), clipped at the image's borders, as
  DeVries & Taylor's cutout and Yun et al.'s CutMix place theirs."""
  top, left = centre_y - box_h // 2, centre_x - box_w // 2
  return (jnp.clip(top, 0, height), jnp.clip(top + box_h, 0, height),
          jnp.clip(left, 0, width), jnp.clip(left + box_w, 0, width))


def cutout_mask(rng, shape, size: int):
  """(n, h, w) True on each example's size x size patch, its centre drawn
  uniformly over the image and the patch clipped at the borders."""
  n, h, w = shape[:3]
  centres = jax.random.randint(rng, (n, 2), 0, jnp.array([h, w]))
  return box_mask(*centred_box(centres[:, 0], centres[:, 1], size, size, h, w),
                  h, w)


def cutout(rng, images, size: int):
  """DeVries & Taylor's cutout: each example's patch (cutout_mask) set to 0.
  On normalized images, 0 is the training set's mean colour."""
  mask = cutout_mask(rng, images.shape, size)
  return jnp.where(mask[..., None], 0.0, images)


def mix(rng, images, labels, num_classes: int, mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0):
  """(images, soft targets (n, classes)) of mixup or CutMix.

  One proportion lam ~ Beta(alpha, alpha) per batch and a random pairing
  (a permutation of the batch): mixup blends each image with its partner,
  lam of its own (Zhang et al.); CutMix pastes one box of the partner,
  of area about 1 - lam, into every image (Yun et al.). The targets weigh
  the two labels as the pixels do: CutMix's partner weight is the pasted
  box's exact area fraction, after clipping at the borders. With both
  alphas > 0, each batch takes one of the two with probability 1/2.
  """
  n, h, w, _ = images.shape
  choose_rng, lam_rng, pair_rng, box_rng = jax.random.split(rng, 4)
  if mixup_alpha and cutmix_alpha:
    use_cutmix = jax.random.bernoulli(choose_rng, 0.5)
  else:
    use_cutmix = jnp.asarray(bool(cutmix_alpha))
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  partner = jax.random.permutation(pair_rng, n)

  # CutMix's box: sides sqrt(1 - lam) of the image's, centre uniform.
  ratio = jnp.sqrt(1.0 - lam)
  box_h = (h * ratio).astype(jnp.int32)
  box_w = (w * ratio).astype(jnp.int32)
  centre = jax.random.randint(box_rng, (2,), 0, jnp.array([h, w]))
  box = box_mask(*centred_box(centre[0], centre[1], box_h, box_w, h, w), h, w)
  pasted = jnp.mean(box.astype(jnp.float32))
  own = jnp.where(use_cutmix, 1.0 - pasted, lam)

  mixed = jnp.where(use_cutmix,
                    jnp.where(box[None, :, :, None], images[partner], images),
                    lam * images + (1.0 - lam) * images[partner])
  targets = jax.nn.one_hot(labels, num_classes)
  return mixed, own * targets + (1.0 - own) * targets[partner]


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training's augmentation, from the config (data.random_crop,
  data.random_flip, data.cutout_size, train.mixup_alpha,
  train.cutmix_alpha). The default is He et al.'s crop and flip."""
  crop: bool = True
  flip: bool = True
  cutout_size: int = 0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  num_classes: int = 10

  @classmethod
  def from_config(cls, config):
    return cls(config.data.random_crop, config.data.random_flip,
               config.data.cutout_size, float(config.train.mixup_alpha),
               float(config.train.cutmix_alpha), config.model.num_classes)

  @property
  def mixing(self) -> bool:
    return bool(self.mixup_alpha or self.cutmix_alpha)

  def __call__(self, rng, images, labels, normalization):
    """(normalized float images, labels): integer labels (n,), or soft
    targets (n, classes) when mixing. `images` are uint8."""
    images = random_crop_flip(rng, images, crop=self.crop, flip=self.flip)
    images = normalize(images, *normalization)
    if self.cutout_size:
      images = cutout(jax.random.fold_in(rng, CUTOUT_KEY), images,
                      self.cutout_size)
    if self.mixing:
      images, labels = mix(jax.random.fold_in(rng, MIX_KEY), images, labels,
                           self.num_classes, self.mixup_alpha,
                           self.cutmix_alpha)
    return images, labels
