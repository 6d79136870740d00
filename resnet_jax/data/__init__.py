"""Datasets as host arrays: uint8 images (N, H, W, C) and int32 labels.

A source module knows one on-disk format and offers `splits(data_config)`,
`load(data_config, split, num_classes)` and `class_names(data_config)`. This
module adds what every source shares: the seeded validation carve-out of
train, the grayscale option and the shape checks.
"""
import dataclasses

import numpy as np

from resnet_jax.data import cifar10_binary, folder, synthetic, tfds
from resnet_jax.errors import DataError

SOURCES = {'cifar10_binary': cifar10_binary, 'folder': folder, 'tfds': tfds,
           'synthetic': synthetic}
SPLITS = ('train', 'val', 'test')
# The validation carve-out is fixed, so every seed and run sees the same one.
VAL_SPLIT_SEED = 0
# ITU-R BT.601 luma, as PIL's convert('L').
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray  # int32 (N,)

  def __len__(self):
    return len(self.labels)


def load_splits(config, names) -> dict[str, Split]:
  """Loads the named splits of `config.data`, carving 'val' from 'train'."""
  data_config, num_classes = config.data, config.model.num_classes
  source = SOURCES[data_config.source]
  # Sources without their own validation split give a slice of train.
  carve = 'val' not in source.splits(data_config)
  raw = {}
  for name in names:
    if name not in SPLITS:
      raise DataError(f'unknown split {name!r}; choose one of {", ".join(SPLITS)}')
    stored = 'train' if carve and name == 'val' else name
    if stored not in raw:
      raw[stored] = source.load(data_config, stored, num_classes)
  out = {}
  for name in names:
    if carve and name != 'test':
      images, labels = raw['train']
      val = _val_mask(len(labels), data_config.val_fraction)
      keep = val if name == 'val' else ~val
      images, labels = images[keep], labels[keep]
    else:
      images, labels = raw[name]
    out[name] = Split(_to_channels(images, data_config.grayscale), labels)
    _check_shape(out[name], name, data_config)
  return out


def padded(split: Split, size: int) -> dict:
  """{'image', 'label', 'mask'} of `split` padded with zeros to `size`
  examples; mask is 1 for the real ones, so padding never counts."""
  pad = size - len(split)
  return {
      'image': np.concatenate([split.images, np.zeros(
          (pad, *split.images.shape[1:]), np.uint8)]),
      'label': np.concatenate([split.labels, np.zeros(pad, np.int32)]),
      'mask': np.concatenate([np.ones(len(split), np.float32),
                              np.zeros(pad, np.float32)]),
  }


def class_names(config) -> tuple[str, ...]:
  names = SOURCES[config.data.source].class_names(config.data)
  num_classes = config.model.num_classes
  if not names:
    return tuple(f'class_{k}' for k in range(num_classes))
  if len(names) != num_classes:
    raise DataError(f'the data has {len(names)} classes but model.num_classes '
                    f'is {num_classes}')
  return names


def channel_stats(images: np.ndarray):
  """Per-channel mean and std of uint8 images, in [0, 1] units."""
  pixels = images.reshape(-1, images.shape[-1])
  mean = np.zeros(pixels.shape[1])
  sq = np.zeros(pixels.shape[1])
  for chunk in np.array_split(pixels, max(1, len(pixels) // 2**22)):
    chunk = chunk.astype(np.float64) / 255
    mean += chunk.sum(0)
    sq += (chunk**2).sum(0)
  mean /= len(pixels)
  std = np.sqrt(sq / len(pixels) - mean**2)
  return mean.tolist(), std.tolist()


def _val_mask(n: int, fraction: float) -> np.ndarray:
  num_val = int(round(n * fraction))
  if not 0 < num_val < n:
    raise DataError(f'data.val_fraction={fraction} of {n} training examples '
                    'leaves an empty train or validation split')
  order = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
  mask = np.zeros(n, bool)
  mask[order[:num_val]] = True
  return mask


def _to_channels(images: np.ndarray, grayscale: bool) -> np.ndarray:
  if not grayscale or images.shape[-1] == 1:
    return images
  gray = images.astype(np.float32) @ GRAY_WEIGHTS
  return np.round(gray).astype(np.uint8)[..., None]


def _check_shape(split: Split, name: str, data_config):
  size, channels = data_config.image_size, 1 if data_config.grayscale else 3
  if split.images.shape[1:] != (size, size, channels):
    raise DataError(f'{name} images are {split.images.shape[1:]} but the config '
                    f'asks for {(size, size, channels)} (data.image_size, '
                    'data.grayscale)')
  if not len(split):
    raise DataError(f'split {name!r} is empty')
