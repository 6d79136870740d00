"""Datasets as host arrays: uint8 images (N, H, W, C) and int32 labels.

A source knows one on-disk format. It is one module of this package and one
line in SOURCES, and offers:

  splits(data_config)       the stored splits present, of SPLITS; without a
                            stored 'val', validation is carved from 'train'.
  class_names(data_config)  the class names, or () to name them class_K.
  Reader(data_config, split, num_classes)
                            one stored split, checked when opened:
    len(reader)             its example count, found without decoding;
    reader.read(i)          (uint8 HWC RGB image, int label, None), or
                            (None, label or None, 'Type: reason') for an
                            unreadable image;
    reader.name(i)          example i in messages (a path, a record ...);
    reader.read_all()       optional: (images, labels) of every readable
                            example, faster than read(i) one by one and the
                            same bytes (data.skip_corrupt drops unreadable
                            ones; else the first raises folder.unreadable).

A source that cannot read one example at a time offers
`load(data_config, split, num_classes) -> (images, labels)` instead of a
Reader, and is only ever loaded whole into memory.

This module adds what every source shares, for both the in-memory path
(load_splits: each stored split read whole) and the streamed one (stream.py:
read batch by batch through the same Reader): where a split lies in the
stored ones (locate, positions: the seeded validation carve of train), the
grayscale option (to_channels) and the checks (empty split, image shape,
label range).
"""
import dataclasses

import numpy as np

from resnet_jax.data import cifar10_binary, cifar100_binary, folder, synthetic
from resnet_jax.data import tfds
from resnet_jax.errors import DataError

SOURCES = {'cifar10_binary': cifar10_binary, 'cifar100_binary': cifar100_binary,
           'folder': folder, 'tfds': tfds, 'synthetic': synthetic}
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
  located = {name: locate(data_config, name) for name in names}
  stored = {}  # A stored split read once, though 'train' and 'val' share it.
  for stored_name, _ in located.values():
    if stored_name not in stored:
      stored[stored_name] = _read_stored(data_config, stored_name, num_classes)
  out = {}
  for name, (stored_name, part) in located.items():
    images, labels = stored[stored_name]
    if part:
      keep = positions(len(labels), part, data_config)
      images, labels = images[keep], labels[keep]
    check_not_empty(len(labels), name)
    out[name] = Split(to_channels(images, data_config.grayscale), labels)
    check_shape(out[name].images.shape[1:], name, data_config)
  return out


def locate(data_config, name: str) -> tuple[str, str | None]:
  """(stored split, part) of split `name`: part is None for the whole stored
  split, else 'train' or 'val', the part of the carve it is."""
  if name not in SPLITS:
    raise DataError(f'unknown split {name!r}; choose one of {", ".join(SPLITS)}')
  if name == 'test' or 'val' in source_module(data_config).splits(data_config):
    return name, None
  if not has_validation(data_config):  # All of the stored train split trains.
    if name == 'val':
      raise DataError('data.val_fraction=0 leaves no validation split (every '
                      'training image trains); evaluate --split=test')
    return 'train', None
  return 'train', name


def has_validation(data_config) -> bool:
  """False with data.val_fraction=0: training uses every training image and
  evaluates nothing during the run."""
  return data_config.val_fraction > 0


def training_splits(data_config) -> tuple[str, ...]:
  """The splits a training run reads."""
  return ('train', 'val') if has_validation(data_config) else ('train',)


def positions(n: int, part: str | None, data_config) -> np.ndarray:
  """Indices into a stored split of n examples of `part` (locate)."""
  if part is None:
    return np.arange(n)
  val = _val_mask(n, data_config.val_fraction)
  return np.flatnonzero(val if part == 'val' else ~val)


def source_module(data_config):
  return SOURCES[data_config.source]


def _read_stored(data_config, split: str, num_classes: int):
  """(images, labels) of every readable example of a stored split."""
  module = source_module(data_config)
  if not hasattr(module, 'Reader'):  # An in-memory-only source.
    images, labels = module.load(data_config, split, num_classes)
    check_labels(labels, num_classes, lambda i: f'{split} example {i}')
    return images, labels
  reader = module.Reader(data_config, split, num_classes)
  read_all = getattr(reader, 'read_all', None)
  images, labels = (read_all() if read_all else
                    _read_each(reader, data_config.skip_corrupt))
  check_labels(labels, num_classes, reader.name)
  return images, labels


def _read_each(reader, skip_corrupt: bool):
  """Every readable example of `reader`, read one by one."""
  examples = [reader.read(i) for i in range(len(reader))]
  ok = folder.check_readable([reader.name(i) for i in range(len(reader))],
                             [error for _, _, error in examples], skip_corrupt)
  kept = [e for e, good in zip(examples, ok) if good]
  images = np.array([image for image, _, _ in kept], np.uint8)
  return images, np.array([label for _, label, _ in kept], np.int32)


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
  names = source_module(config.data).class_names(config.data)
  num_classes = config.model.num_classes
  if not names:
    return tuple(f'class_{k}' for k in range(num_classes))
  if len(names) != num_classes:
    raise DataError(f'the data has {len(names)} classes but model.num_classes '
                    f'is {num_classes}')
  return names


def channel_stats(images: np.ndarray):
  """Per-channel mean and std of uint8 images, in [0, 1] units.

  From each channel's histogram of the 256 values (exact integer counts): a
  sixth of the time of summing the pixels as floats, and no float64 copy.
  """
  channels = images.shape[-1]
  pixels = images.reshape(-1, channels)
  counts = np.zeros((channels, 256), np.int64)
  for chunk in np.array_split(pixels, max(1, len(pixels) // 2**22)):
    for c in range(channels):
      counts[c] += np.bincount(chunk[:, c], minlength=256)
  values = np.arange(256) / 255
  mean = counts @ values / len(pixels)
  std = np.sqrt(counts @ values**2 / len(pixels) - mean**2)
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


def to_channels(images: np.ndarray, grayscale: bool) -> np.ndarray:
  """RGB images (..., 3) as data.grayscale asks: unchanged, or their luma."""
  if not grayscale or images.shape[-1] == 1:
    return images
  gray = images.astype(np.float32) @ GRAY_WEIGHTS
  return np.round(gray).astype(np.uint8)[..., None]



# The checks of both paths.


def check_not_empty(count: int, name: str):
  if not count:
    raise DataError(f'split {name!r} is empty')


def check_shape(shape, name: str, data_config):
  """`shape` (H, W, C), after to_channels, is the one the config asks for."""
  size, channels = data_config.image_size, 1 if data_config.grayscale else 3
  if tuple(shape) != (size, size, channels):
    raise DataError(f'{name} images are {tuple(shape)} but the config asks '
                    f'for {(size, size, channels)} (data.image_size, '
                    'data.grayscale)')


def check_labels(labels, num_classes: int, example_name):
  """Every label is a class; example_name(i) names example i."""
  bad = np.flatnonzero((np.asarray(labels) < 0) |
                       (np.asarray(labels) >= num_classes))
  if bad.size:
    raise DataError(f'{example_name(bad[0])} has label {labels[bad[0]]}, '
                    f'outside 0..{num_classes - 1}')
