"""CIFAR-10 in the official binary layout (cifar-10-binary.tar.gz).

Each record is 3,073 bytes: one label byte, then the 1,024 red, 1,024 green
and 1,024 blue bytes of a 32x32 image, row-major. The record count comes from
the file size, never from an assumed 10,000. With no data.dir, the data is
CIFAR-10 downloaded once into a cache folder (data/download.py).
"""
import os
import re

import numpy as np

from resnet_jax.data import download, folder
from resnet_jax.errors import DataError

# What data.dir must be, for the message when it is not.
DIR_WANTED = 'cifar-10-batches-bin folder'

RECORD_BYTES = 1 + 32 * 32 * 3
DEFAULT_CLASS_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                       'frog', 'horse', 'ship', 'truck')


def data_dir(data_config) -> str:
  """data.dir, or (when empty) the cached download."""
  if data_config.dir:
    return data_config.dir
  return download.cifar10(bool(data_config.download))


def _split_files(directory: str, split: str) -> list[str]:
  if split == 'test':
    names = ['test_batch.bin'] if os.path.isfile(
        os.path.join(directory, 'test_batch.bin')) else []
  else:
    batch_number = lambda n: int(re.fullmatch(r'data_batch_(\d+)\.bin', n)[1])
    names = sorted((n for n in os.listdir(directory)
                    if re.fullmatch(r'data_batch_\d+\.bin', n)),
                   key=batch_number)
  return [os.path.join(directory, n) for n in names]


def splits(data_config) -> tuple[str, ...]:
  """The splits whose files are present ('val' is carved from 'train')."""
  directory = data_dir(data_config)
  folder.check_dir(directory, DIR_WANTED)
  return tuple(s for s in ('train', 'test') if _split_files(directory, s))


def read_file(path: str):
  """Reads one .bin file into uint8 images (N, 32, 32, 3) and int32 labels."""
  _check_size(path)
  records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
  images, labels = decode_records(records)
  return np.ascontiguousarray(images), labels


def open_records(data_config, split: str) -> list[tuple[str, np.ndarray]]:
  """(path, memory-mapped (N, 3073) uint8 records) per file of the split:
  records are read from disk only when indexed."""
  directory = data_dir(data_config)
  folder.check_dir(directory, DIR_WANTED)
  files = _split_files(directory, split)
  _check_present(files, directory, split)
  return [(f, np.memmap(f, np.uint8, 'r', shape=(_check_size(f), RECORD_BYTES)))
          for f in files]


def decode_records(records):
  """(N, 3073) records to uint8 (N, 32, 32, 3) images and int32 labels."""
  labels = records[:, 0].astype(np.int32)
  return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


class Reader:
  """The records of a split's files, memory-mapped (the source's Reader)."""

  def __init__(self, data_config, split: str, num_classes: int):
    del num_classes  # Labels are checked by the caller.
    self.files = open_records(data_config, split)
    self.ends = np.cumsum([len(records) for _, records in self.files])

  def __len__(self):
    return int(self.ends[-1])

  def read(self, i):
    f, first = self._locate(i)
    images, labels = decode_records(
        np.asarray(self.files[f][1][first:first + 1]))
    return np.ascontiguousarray(images[0]), int(labels[0]), None

  def name(self, i):
    f, first = self._locate(i)
    return f'{self.files[f][0]}: record {first}'

  def read_all(self):
    """All records at once, decoded in one vectorized step per file."""
    parts = [decode_records(np.asarray(records)) for _, records in self.files]
    images = np.empty((len(self), 32, 32, 3), np.uint8)  # C order, as read().
    np.concatenate([part for part, _ in parts], out=images)
    return images, np.concatenate([labels for _, labels in parts])

  def _locate(self, i):
    """(file number, record number in that file) of record i."""
    f = int(np.searchsorted(self.ends, i, side='right'))
    return f, i - (int(self.ends[f - 1]) if f else 0)


def _check_size(path: str) -> int:
  """The record count of a .bin file, checked to be whole records."""
  size = os.path.getsize(path)
  if size == 0 or size % RECORD_BYTES:
    raise DataError(f'{path} is {size} bytes, not a positive multiple of the '
                    f'{RECORD_BYTES}-byte CIFAR-10 record (truncated file?)')
  return size // RECORD_BYTES


def _check_present(files, directory, split):
  if not files:
    wanted = 'test_batch.bin' if split == 'test' else 'data_batch_*.bin'
    raise DataError(f'split {split!r} asked for, but {directory} has '
                    f'no {wanted}')


def load(data_config, split: str, num_classes: int):
  """Returns (images, labels) of 'train' (all data_batch_*.bin) or 'test'."""
  return Reader(data_config, split, num_classes).read_all()


def class_names(data_config) -> tuple[str, ...]:
  meta = os.path.join(data_dir(data_config), 'batches.meta.txt')
  if os.path.isfile(meta):
    with open(meta) as f:
      names = tuple(line.strip() for line in f if line.strip())
    if names:
      return names
  return DEFAULT_CLASS_NAMES
