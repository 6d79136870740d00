"""Image folders in torchvision's ImageFolder layout.

    DIR/train/CLASS/*.png|*.jpg|*.jpeg   (required for training)
    DIR/val/CLASS/...                    (optional: else carved from train)
    DIR/test/CLASS/...                   (optional: needed by --split=test)

Class names are the sorted sub-folder names (Python string order, as
torchvision) and must be the same in every split present; label k is the k-th
name. Files are found recursively under each class folder; other extensions
and hidden entries are ignored.

Every image is decoded with Pillow, in a thread pool (Pillow releases the GIL
while decoding), into one preallocated uint8 array: nothing is cached on disk.
Each image becomes RGB (alpha is composited over black, palette, grayscale,
16-bit and CMYK files are converted; `data.grayscale` then takes the luma for
every source) and, when it is not already `data.image_size` square, is resized
to it with Pillow's antialiased bilinear filter (the aspect ratio is not
kept). Large JPEGs are first reduced in the decoder (Pillow's draft mode),
which is much faster and only loses detail that the resize drops anyway.
"""
import concurrent.futures
import io
import os
import sys

import numpy as np
from PIL import Image

from resnet_jax.errors import DataError

SPLIT_FOLDERS = ('train', 'val', 'test')
EXTENSIONS = ('.png', '.jpg', '.jpeg')
RESAMPLE = Image.Resampling.BILINEAR  # Antialiased when downscaling.
CHUNK = 64  # Images per thread-pool task.


def splits(data_config) -> tuple[str, ...]:
  """The split folders present under data.dir."""
  check_dir(data_config.dir)
  return tuple(s for s in SPLIT_FOLDERS
               if os.path.isdir(os.path.join(data_config.dir, s)))


def class_names(data_config) -> tuple[str, ...]:
  """Sorted class folder names, checked to be the same in every split."""
  present = splits(data_config)
  if not present:
    raise DataError(f'{data_config.dir} has none of the folders '
                    f'{", ".join(SPLIT_FOLDERS)} (expected DIR/train/CLASS/'
                    'IMAGE files)')
  names = {s: _class_folders(os.path.join(data_config.dir, s)) for s in present}
  reference = 'train' if 'train' in names else present[0]
  ref_path = os.path.join(data_config.dir, reference)
  for split, found in names.items():
    path = os.path.join(data_config.dir, split)
    extra = sorted(set(found) - set(names[reference]))
    missing = sorted(set(names[reference]) - set(found))
    if extra:
      raise DataError(f'{path} has class folders that {ref_path} lacks: '
                      f'{", ".join(extra)} (class folders must be the same in '
                      'every split)')
    if missing:
      raise DataError(f'{path} lacks the class folders {", ".join(missing)} '
                      f'of {ref_path} (class folders must be the same in every '
                      'split)')
  return names[reference]


class Reader:
  """A split's image files, decoded on demand (the source's Reader)."""

  def __init__(self, data_config, split: str, num_classes: int):
    self.files, self.labels = list_files(data_config, split, num_classes)
    self.data_config, self.split = data_config, split

  def __len__(self):
    return len(self.files)

  def read(self, i):
    image, error = try_decode(self.files[i], self.data_config.image_size)
    return image, self.labels[i], error

  def name(self, i):
    return self.files[i]

  def read_all(self):
    """Every readable image, decoded in a thread pool."""
    config = self.data_config
    check_memory_budget(os.path.join(config.dir, self.split), len(self.files),
                        config)
    images, ok = decode_files(self.files, config.image_size,
                              config.decode_threads, config.skip_corrupt)
    if ok.all():
      return images, self.labels
    labels = self.labels[ok]
    emptied = np.setdiff1d(self.labels, labels)
    if emptied.size:
      names = class_names(config)
      raise DataError(f'{os.path.join(config.dir, self.split, names[emptied[0]])}'
                      ' has no readable image left after skipping the '
                      'unreadable ones')
    return images[ok], labels


def load(data_config, split: str, num_classes: int):
  """Decodes every image of `split` into uint8 (N, S, S, 3) and int32 labels."""
  return Reader(data_config, split, num_classes).read_all()


def list_files(data_config, split: str, num_classes: int):
  """The image files of `split` and their int32 labels, checked, not decoded."""
  root = os.path.join(data_config.dir, split)
  if split not in splits(data_config):
    raise DataError(f'split {split!r} asked for, but {data_config.dir} has no '
                    f'{split}/ folder')
  names = class_names(data_config)
  if len(names) != num_classes:
    raise DataError(f'{data_config.dir} has {len(names)} class folders '
                    f'({_preview(names)}) but model.num_classes is '
                    f'{num_classes}: pass --config.model.num_classes='
                    f'{len(names)}')
  files, labels = [], []
  for label, name in enumerate(names):
    found = image_files(os.path.join(root, name))
    if not found:
      raise DataError(f'{os.path.join(root, name)} is an empty class folder '
                      f'(no {"/".join(EXTENSIONS)} files)')
    files += found
    labels += [label] * len(found)
  return files, np.asarray(labels, np.int32)


def decode_files(paths, size: int, threads: int = 0, skip_corrupt=False,
                 names=None):
  """Decodes images in parallel into uint8 (N, size, size, 3).

  `paths` holds file paths or encoded bytes; `names` (default: the paths)
  name them in messages. Returns (images, ok): ok[i] is False for an image
  skipped as unreadable (its row is zeros). Without skip_corrupt, the first
  unreadable one (in order) raises DataError naming it.
  """
  names = paths if names is None else names
  images = np.zeros((len(paths), size, size, 3), np.uint8)
  errors = [None] * len(paths)

  def work(start):
    for i in range(start, min(start + CHUNK, len(paths))):
      image, errors[i] = try_decode(paths[i], size)
      if image is not None:
        images[i] = image

  threads = threads or os.cpu_count() or 1
  starts = range(0, len(paths), CHUNK)
  if threads == 1 or len(starts) == 1:
    for start in starts:
      work(start)
  else:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(work, starts))
  return images, check_readable(names, errors, skip_corrupt)


def check_readable(names, errors, skip_corrupt: bool) -> np.ndarray:
  """Whether each image (errors[i]: None or its reason) was readable.

  Without skip_corrupt, the first unreadable one raises DataError naming it;
  with it, each is named in a warning.
  """
  bad = [i for i, e in enumerate(errors) if e]
  if bad and not skip_corrupt:
    raise unreadable(names[bad[0]], errors[bad[0]], len(bad) - 1)
  for i in bad:
    warn_skipped(names[i], errors[i])
  ok = np.ones(len(errors), bool)
  ok[bad] = False
  return ok


def try_decode(path_or_bytes, size: int):
  """(image, None), or (None, 'Type: reason') for an unreadable image."""
  try:
    return decode(path_or_bytes, size), None
  except Exception as e:  # Pillow raises many types for a bad file.
    reason = str(e).replace(f' {path_or_bytes!r}', '').replace('\n', ' ')
    return None, f'{type(e).__name__}: {reason}'


def unreadable(name: str, reason: str, more: int = 0) -> DataError:
  """The one-line error for an unreadable image (and `more` others)."""
  return DataError(f'{name} is not a readable image ({reason}); fix or remove '
                   'it, or pass --config.data.skip_corrupt=True'
                   + (f' ({more} more unreadable)' if more else ''))


def warn_skipped(name: str, reason: str):
  print(f'warning: skipped unreadable image {name} ({reason})', file=sys.stderr)


def decode(path_or_bytes, size: int) -> np.ndarray:
  """One image file (a path, or its bytes) to a uint8 (size, size, 3) array."""
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    path_or_bytes = io.BytesIO(path_or_bytes)
  with Image.open(path_or_bytes) as image:
    if image.format == 'JPEG':
      # Lets libjpeg decode at 1/2, 1/4 or 1/8 scale, never below `size`.
      image.draft('RGB', (size, size))
    image.load()
    image = to_rgb(image)
  if image.size != (size, size):
    image = image.resize((size, size), RESAMPLE)
  return np.asarray(image, np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
  if image.mode == 'RGB':
    return image
  if image.mode.startswith('I'):  # 16-bit (or 32-bit) grayscale.
    pixels = np.asarray(image).astype(np.float64)
    scale = 255 / 65535 if image.mode.startswith('I;16') or pixels.max() > 255 else 1
    gray = np.clip(np.round(pixels * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, 'L').convert('RGB')
  if image.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or (
      image.mode in ('P', 'L', 'RGB') and 'transparency' in image.info):
    image = image.convert('RGBA')
    black = Image.new('RGBA', image.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, image).convert('RGB')
  return image.convert('RGB')  # L, P, CMYK, YCbCr, 1, F ...


def image_files(folder: str) -> list[str]:
  """The image files under `folder`, recursively, sorted, hidden entries
  skipped."""
  found = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    found += [os.path.join(root, f) for f in sorted(files)
              if not f.startswith('.') and f.lower().endswith(EXTENSIONS)]
  return found


def _class_folders(split_dir: str) -> tuple[str, ...]:
  entries = sorted(e for e in os.listdir(split_dir) if not e.startswith('.'))
  stray = [e for e in entries if e.lower().endswith(EXTENSIONS)
           and os.path.isfile(os.path.join(split_dir, e))]
  if stray:
    raise DataError(f'{os.path.join(split_dir, stray[0])} is not in a class '
                    f'folder: put each image in {split_dir}/CLASS_NAME/')
  names = tuple(e for e in entries if os.path.isdir(os.path.join(split_dir, e)))
  if not names:
    raise DataError(f'{split_dir} is an empty split: it has no class folders')
  return names


def _preview(names, limit=5) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f', … {len(names) - limit} more' if len(names) > limit else '')


def check_dir(data_dir: str,
              what: str = 'folder holding train/ (and optionally val/, test/)'):
  """data.dir is set and is a folder; `what` says what it should be."""
  if not data_dir:
    raise DataError(f'data.dir is not set: pass --config.data.dir=PATH to the '
                    f'{what}')
  if not os.path.isdir(data_dir):
    raise DataError(f'data.dir {data_dir!r} is not a folder')


def fits_in_memory(count: int, data_config) -> bool:
  """Whether `count` images, decoded, fit data.max_in_memory_gb."""
  return decoded_gb(count, data_config) <= data_config.max_in_memory_gb


def decoded_gb(count: int, data_config) -> float:
  return count * data_config.image_size**2 * 3 / 1e9


def check_memory_budget(what: str, count: int, data_config):
  """Refuses a split that would not fit data.max_in_memory_gb once decoded."""
  if not fits_in_memory(count, data_config):
    size = data_config.image_size
    raise DataError(
        f'{what} decodes to {decoded_gb(count, data_config):.1f} GB ({count} '
        f'images of {size}x{size}x3), over data.max_in_memory_gb='
        f'{data_config.max_in_memory_gb:g}: each split is held whole in host '
        'and device memory; raise --config.data.max_in_memory_gb if it fits, or '
        'lower data.image_size (training streams such splits from disk with '
        '--config.data.streaming=auto or on)')
