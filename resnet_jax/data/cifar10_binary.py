"""CIFAR-10 in the official binary layout (cifar-10-binary.tar.gz), and the
layout's other users (cifar100_binary.py).

Each record is a label byte (CIFAR-100: a coarse and a fine one), then the
1,024 red, 1,024 green and 1,024 blue bytes of a 32x32 image, row-major. The
record count comes from the file size, never from an assumed 10,000. With no
data.dir, the data is downloaded once into a cache folder (data/download.py).
"""
import dataclasses
import os
import re

import numpy as np

from resnet_jax.data import download, folder
from resnet_jax.errors import DataError

IMAGE_BYTES = 32 * 32 * 3


@dataclasses.dataclass(frozen=True)
class Layout:
  """One dataset in the CIFAR binary layout."""
  archive: download.Archive
  train_files: str  # A regex; its group 1, if any, numbers the files.
  train_wanted: str  # The same, for messages.
  test_file: str
  label_bytes: int  # Before each image.
  label_byte: int  # Which of them is the class.
  meta_file: str  # The class names, one a line.
  default_class_names: tuple[str, ...]

  @property
  def record_bytes(self) -> int:
    return self.label_bytes + IMAGE_BYTES


CIFAR10 = Layout(
    download.CIFAR10, r'data_batch_(\d+)\.bin', 'data_batch_*.bin',
    'test_batch.bin', 1, 0,
    'batches.meta.txt', ('airplane', 'automobile', 'bird', 'cat', 'deer',
                         'dog', 'frog', 'horse', 'ship', 'truck'))


def data_dir(data_config, layout: Layout = CIFAR10) -> str:
  """data.dir, or (when empty) the cached download."""
  if data_config.dir:
    return data_config.dir
  return download.fetch(layout.archive, bool(data_config.download))


def _split_files(directory: str, split: str, layout: Layout) -> list[str]:
  if split == 'test':
    names = [layout.test_file] if os.path.isfile(
        os.path.join(directory, layout.test_file)) else []
  else:
    matches = [re.fullmatch(layout.train_files, n)
               for n in os.listdir(directory)]
    names = [m[0] for m in sorted(filter(None, matches),
                                  key=lambda m: int(m[1]) if m.groups() else 0)]
  return [os.path.join(directory, n) for n in names]


def splits(data_config, layout: Layout = CIFAR10) -> tuple[str, ...]:
  """The splits whose files are present ('val' is carved from 'train')."""
  directory = data_dir(data_config, layout)
  folder.check_dir(directory, f'{layout.archive.folder} folder')
  return tuple(s for s in ('train', 'test')
               if _split_files(directory, s, layout))


def read_file(path: str, layout: Layout = CIFAR10):
  """Reads one .bin file into uint8 images (N, 32, 32, 3) and int32 labels."""
  _check_size(path, layout)
  records = np.fromfile(path, dtype=np.uint8).reshape(-1, layout.record_bytes)
  images, labels = decode_records(records, layout)
  return np.ascontiguousarray(images), labels


def open_records(data_config, split: str, layout: Layout = CIFAR10):
  """(path, memory-mapped (N, record bytes) uint8 records) per file of the
  split: records are read from disk only when indexed."""
  directory = data_dir(data_config, layout)
  folder.check_dir(directory, f'{layout.archive.folder} folder')
  files = _split_files(directory, split, layout)
  _check_present(files, directory, split, layout)
  return [(f, np.memmap(f, np.uint8, 'r', shape=(_check_size(f, layout),
                                                 layout.record_bytes)))
          for f in files]


def decode_records(records, layout: Layout = CIFAR10):
  """(N, record bytes) records to uint8 (N, 32, 32, 3) images and int32
  labels."""
  labels = records[:, layout.label_byte].astype(np.int32)
  images = records[:, layout.label_bytes:].reshape(-1, 3, 32, 32)
  return images.transpose(0, 2, 3, 1), labels


class Reader:
  """The records of a split's files, memory-mapped (the source's Reader)."""
  layout = CIFAR10

  def __init__(self, data_config, split: str, num_classes: int):
    del num_classes  # Labels are checked by the caller.
    self.files = open_records(data_config, split, self.layout)
    self.ends = np.cumsum([len(records) for _, records in self.files])

  def __len__(self):
    return int(self.ends[-1])

  def read(self, i):
    f, first = self._locate(i)
    images, labels = decode_records(
        np.asarray(self.files[f][1][first:first + 1]), self.layout)
    return np.ascontiguousarray(images[0]), int(labels[0]), None

  def name(self, i):
    f, first = self._locate(i)
    return f'{self.files[f][0]}: record {first}'

  def read_all(self):
    """All records at once, decoded in one vectorized step per file."""
    parts = [decode_records(np.asarray(records), self.layout)
             for _, records in self.files]
    images = np.empty((len(self), 32, 32, 3), np.uint8)  # C order, as read().
    np.concatenate([part for part, _ in parts], out=images)
    return images, np.concatenate([labels for _, labels in parts])

  def _locate(self, i):
    """(file number, record number in that file) of record i."""
    f = int(np.searchsorted(self.ends, i, side='right'))
    return f, i - (int(self.ends[f - 1]) if f else 0)


def _check_size(path: str, layout: Layout) -> int:
  """The record count of a .bin file, checked to be whole records."""
  size = os.path.getsize(path)
  if size == 0 or size % layout.record_bytes:
    raise DataError(f'{path} is {size} bytes, not a positive multiple of the '
                    f'{layout.record_bytes}-byte {layout.archive.name} record '
                    '(truncated file?)')
  return size // layout.record_bytes


def _check_present(files, directory, split, layout: Layout):
  if not files:
    wanted = layout.test_file if split == 'test' else layout.train_wanted
    raise DataError(f'split {split!r} asked for, but {directory} has '
                    f'no {wanted}')


def load(data_config, split: str, num_classes: int):
  """Returns (images, labels) of 'train' (all data_batch_*.bin) or 'test'."""
  return Reader(data_config, split, num_classes).read_all()


def class_names(data_config, layout: Layout = CIFAR10) -> tuple[str, ...]:
  meta = os.path.join(data_dir(data_config, layout), layout.meta_file)
  if os.path.isfile(meta):
    with open(meta) as f:
      names = tuple(line.strip() for line in f if line.strip())
    if names:
      return names
  return layout.default_class_names
