"""Random images of any size, for benchmarks and tests.

Each class has its own random colour, and an image is that colour under
strong per-pixel noise: learnable whatever the crop or flip (so a test can
watch the loss fall), yet no single pixel gives the class away.
"""
import zlib

import numpy as np


def splits(data_config) -> tuple[str, ...]:
  return ('train', 'test')


def load(data_config, split: str, num_classes: int):
  size = data_config.image_size
  colours = np.random.default_rng(data_config.synthetic_seed).integers(
      0, 256, (num_classes, 1, 1, 3))
  # Each split gets its own stream, so 'test' never repeats 'train'.
  rng = np.random.default_rng([data_config.synthetic_seed,
                               zlib.crc32(split.encode())])
  n = data_config.synthetic_examples
  labels = rng.integers(0, num_classes, (n,), dtype=np.int32)
  noise = rng.integers(0, 256, (n, size, size, 3))
  images = (colours[labels] + noise) // 2
  return images.astype(np.uint8), labels


class Reader:
  """The split generated whole in memory; streaming it exercises that path."""

  def __init__(self, data_config, split: str, num_classes: int):
    self.images, self.labels = load(data_config, split, num_classes)

  def __len__(self):
    return len(self.labels)

  def read(self, i):
    return self.images[i], self.labels[i], None

  def name(self, i):
    return f'synthetic[{i}]'

  def read_all(self):
    return self.images, self.labels


def class_names(data_config) -> tuple[str, ...]:
  return ()  # The caller names them class_K from model.num_classes.
