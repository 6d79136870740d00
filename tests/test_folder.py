"""data.source=folder: ImageFolder layouts generated here, never downloaded."""
import os

import numpy as np
import pytest
from PIL import Image

from conftest import cli_args, run_cli, tiny_config
from resnet_jax import data, evaluate, inference, train
from resnet_jax.data import folder
from resnet_jax.errors import DataError

SIZE = 16


def folder_config(root, **overrides):
  return tiny_config(**{'data.source': 'folder', 'data.dir': str(root),
                        'model.num_classes': 2, **overrides})


def class_image(label, rng, shape=(SIZE, SIZE)):
  """A per-class colour under noise, as the synthetic source: learnable."""
  colour = np.random.default_rng(1000 + label).integers(0, 256, 3)
  noise = rng.integers(0, 256, (*shape, 3))
  return ((colour + noise) // 2).astype(np.uint8)


def save(path, pixels, mode=None, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(pixels)
  if mode:
    image = image.convert(mode)
  image.save(path, **kwargs)


def make_folder(root, counts, seed=0):
  """counts: {split: {class: n}}. PNG and JPEG, odd sizes, a few modes."""
  rng = np.random.default_rng(seed)
  names = sorted({c for split in counts.values() for c in split})
  shapes = [(SIZE, SIZE), (23, 17), (SIZE, SIZE), (40, 40), (9, 30)]
  for split, classes in counts.items():
    os.makedirs(os.path.join(root, split), exist_ok=True)
    for name, n in classes.items():
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for i in range(n):
        pixels = class_image(names.index(name), rng, shapes[i % len(shapes)])
        stem = os.path.join(root, split, name, f'{i:03d}')
        if i % 5 == 3:
          save(stem + '.jpg', pixels, quality=95)
        elif i % 7 == 6:
          save(stem + '.png', pixels, mode='RGBA')
        else:
          save(stem + '.png', pixels)
  return root


def smooth(shape):
  """A smooth colour gradient: survives JPEG and resizing almost unchanged."""
  y, x = np.mgrid[:shape[0], :shape[1]]
  return np.stack([x * 255 // max(1, shape[1] - 1), y * 255 // max(1, shape[0] - 1),
                   np.full(shape, 128)], -1).astype(np.uint8)


def test_decodes_png_jpeg_odd_sizes_and_modes(tmp_path):
  rng = np.random.default_rng(0)
  exact = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  odd = rng.integers(0, 256, (23, 41, 3), dtype=np.uint8)
  gray = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
  rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
  rgba[..., :3] = (200, 100, 50)
  rgba[:, SIZE // 2:, 3] = 255  # Left half transparent, right half opaque.
  train = tmp_path / 'train'
  save(str(train / 'a/1_exact.png'), exact)
  save(str(train / 'a/2_odd.png'), odd)
  save(str(train / 'a/3_photo.JPG'), smooth((SIZE, SIZE)), quality=95)
  save(str(train / 'a/4_big.jpeg'), smooth((96, 128)), quality=95)
  save(str(train / 'b/1_rgba.png'), rgba)
  save(str(train / 'b/2_palette.png'), exact, mode='P')
  save(str(train / 'b/3_gray.png'), gray)
  Image.fromarray(gray.astype(np.uint16) * 257).save(train / 'b/4_gray16.png')
  save(str(train / 'b/5_gray.jpg'), smooth((SIZE, SIZE))[..., 0], quality=95)
  (train / 'b/notes.txt').write_text('not an image: ignored')
  (train / 'b/.hidden.png').write_bytes(b'ignored too')

  config = folder_config(tmp_path).data
  images, labels = folder.load(config, 'train', 2)
  assert images.shape == (9, SIZE, SIZE, 3) and images.dtype == np.uint8
  assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
  np.testing.assert_array_equal(images[0], exact)
  resized = Image.fromarray(odd).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
  np.testing.assert_array_equal(images[1], np.asarray(resized))
  for i in (2, 3):  # JPEG (and its draft-mode downscale) stays close.
    diff = np.abs(images[i].astype(int) - smooth((SIZE, SIZE)).astype(int))
    assert diff.mean() < 6, (i, diff.mean())
  np.testing.assert_array_equal(images[4][:, :SIZE // 2], 0)  # Over black.
  np.testing.assert_array_equal(images[4][:, SIZE // 2:], np.broadcast_to(
      (200, 100, 50), (SIZE, SIZE // 2, 3)))
  palette = np.asarray(Image.fromarray(exact).convert('P').convert('RGB'))
  np.testing.assert_array_equal(images[5], palette)
  for i in (6, 7):  # 8-bit and 16-bit grayscale: the same gray in R, G, B.
    np.testing.assert_array_equal(images[i], np.repeat(gray[..., None], 3, -1))
  assert (images[8][..., 0] == images[8][..., 2]).all()
  # One thread or many: the same bytes.
  config.decode_threads = 1
  np.testing.assert_array_equal(folder.load(config, 'train', 2)[0], images)


def test_val_folder_is_used_and_otherwise_carved_from_train(tmp_path):
  make_folder(tmp_path, {'train': {'zebra': 10, 'ant': 10, 'Moth': 10},
                         'test': {'zebra': 2, 'ant': 2, 'Moth': 2}})
  config = folder_config(tmp_path, **{'model.num_classes': 3})
  assert data.class_names(config) == ('Moth', 'ant', 'zebra')
  splits = data.load_splits(config, ('train', 'val', 'test'))
  assert [len(splits[s]) for s in ('train', 'val', 'test')] == [24, 6, 6]
  make_folder(tmp_path, {'val': {'zebra': 1, 'ant': 2, 'Moth': 1}}, seed=1)
  splits = data.load_splits(config, ('train', 'val'))
  assert [len(splits[s]) for s in ('train', 'val')] == [30, 4]
  assert sorted(splits['val'].labels.tolist()) == [0, 1, 1, 2]
  gray = data.load_splits(folder_config(tmp_path, **{
      'model.num_classes': 3, 'data.grayscale': True}), ('val',))['val']
  assert gray.images.shape == (4, SIZE, SIZE, 1)


def corrupt(root, name, how):
  path = os.path.join(root, 'train', 'a', name)
  if how == 'garbage':
    with open(path, 'wb') as f:
      f.write(b'\x89PNG\r\n\x1a\n this is not really a PNG')
  else:  # Truncated: half of a valid file.
    save(path, np.zeros((SIZE, SIZE, 3), np.uint8) + 7)
    with open(path, 'rb') as f:
      head = f.read()
    with open(path, 'wb') as f:
      f.write(head[:len(head) // 2])
  return path


def arrange(root, defect):
  make_folder(root, {'train': {'a': 4, 'b': 4}, 'test': {'a': 1, 'b': 1}})
  if defect == 'garbage':
    corrupt(root, 'bad.png', 'garbage')
  elif defect == 'truncated':
    corrupt(root, 'cut.jpg', 'truncated')
  elif defect == 'empty_class':
    os.makedirs(os.path.join(root, 'train', 'c'))
    os.makedirs(os.path.join(root, 'test', 'c'))
  elif defect == 'class_only_in_test':
    make_folder(root, {'test': {'cat': 1}})
  elif defect == 'class_missing_from_val':
    make_folder(root, {'val': {'a': 1}})
  elif defect == 'empty_split':
    os.makedirs(os.path.join(root, 'val'))
  elif defect == 'stray_image':
    save(os.path.join(root, 'train', 'x.png'), np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize('defect,overrides,split,message', [
    ('garbage', {}, 'train', r'train/a/bad.png is not a readable image \(Unid'),
    ('truncated', {}, 'train', r'train/a/cut.jpg is not a readable image'),
    ('empty_class', {'model.num_classes': 3}, 'train',
     r'train/c is an empty class folder \(no .png/.jpg/.jpeg files\)'),
    ('class_only_in_test', {}, 'test',
     r'/test has class folders that .*/train lacks: cat'),
    ('class_missing_from_val', {}, 'train',
     r'/val lacks the class folders b of .*/train'),
    ('empty_split', {}, 'train', r'/val is an empty split: it has no class'),
    ('stray_image', {}, 'train', r'train/x.png is not in a class folder'),
    (None, {'model.num_classes': 10}, 'train',
     r'has 2 class folders \(a, b\) but model.num_classes is 10: pass '
     r'--config.model.num_classes=2'),
    (None, {'data.max_in_memory_gb': 1e-6}, 'train',
     r'train decodes to 0.0 GB \(8 images of 16x16x3\), over '
     r'data.max_in_memory_gb=1e-06.*raise --config.data.max_in_memory_gb'),
])
def test_bad_folders_are_one_line_errors(tmp_path, defect, overrides, split,
                                         message):
  arrange(tmp_path, defect)
  with pytest.raises(DataError, match=message) as error:
    data.load_splits(folder_config(tmp_path, **overrides), (split,))
  assert '\n' not in str(error.value)


def test_missing_train_folder_and_data_dir(tmp_path):
  make_folder(tmp_path, {'test': {'a': 1, 'b': 1}})
  config = folder_config(tmp_path)
  assert len(data.load_splits(config, ('test',))['test']) == 2
  with pytest.raises(DataError, match=r"split 'train' asked for, but .* has no "
                     r'train/ folder'):
    data.load_splits(config, ('train',))
  with pytest.raises(DataError, match='is not a folder'):
    data.load_splits(folder_config(tmp_path / 'nope'), ('test',))


def test_skip_corrupt_lists_each_skipped_file(tmp_path, capsys):
  arrange(tmp_path, None)
  bad = [corrupt(tmp_path, 'bad.png', 'garbage'),
         corrupt(tmp_path, 'cut.png', 'truncated')]
  config = folder_config(tmp_path, **{'data.val_fraction': 0.25})
  with pytest.raises(DataError, match=r'bad.png is not a readable image .* '
                     r'\(1 more unreadable\)'):
    data.load_splits(config, ('train',))
  config.data.skip_corrupt = True
  capsys.readouterr()
  splits = data.load_splits(config, ('train', 'val'))
  assert len(splits['train']) + len(splits['val']) == 8
  lines = capsys.readouterr().err.strip().splitlines()
  assert [l.split(' (')[0] for l in lines] == [
      f'warning: skipped unreadable image {p}' for p in bad]
  for name in os.listdir(tmp_path / 'train' / 'b'):  # Nothing readable left.
    corrupt(tmp_path, os.path.join('..', 'b', name), 'garbage')
  with pytest.raises(DataError, match='/train/b has no readable image left'):
    data.load_splits(config, ('train',))


@pytest.mark.slow
def test_train_then_evaluate_a_checkpoint_on_the_test_split(tmp_path):
  """Mixed PNG/JPEG/RGBA files of odd sizes: learns; evaluate reads test/."""
  root = make_folder(tmp_path / 'images', {
      'train': {'cat': 20, 'dog': 20, 'emu': 20},
      'test': {'cat': 7, 'dog': 7, 'emu': 7}})
  config = folder_config(root, **{
      'model.num_classes': 3, 'train.steps': 30, 'train.eval_every': 30,
      'train.log_every': 10, 'data.val_fraction': 0.2})
  result = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert result['val_accuracy'] >= 0.6  # 3 classes: chance is 1/3.
  report = evaluate.evaluate(config, str(tmp_path / 'w'), 'latest', 'test')
  assert report['split'] == 'test' and report['num_examples'] == 21
  assert report['step'] == 30 and report['accuracy'] >= 0.6


def test_grayscale_folder_trains_a_one_channel_model(tmp_path):
  root = make_folder(tmp_path / 'images', {'train': {'a': 12, 'b': 12}})
  config = folder_config(root, **{'data.grayscale': True, 'train.steps': 4,
                                  'train.eval_every': 4, 'train.warmup_steps': 1})
  train.train_and_evaluate(config, str(tmp_path / 'w'))
  mesh = train.create_mesh()
  state, step, meta = inference.restore(
      config, str(tmp_path / 'w'), 'latest', mesh)
  assert step == 4  # The stem convolution sees one channel:
  # (members, 3, 3, 1, 16): one member.
  assert state.params['Conv_0']['kernel'].shape == (1, 3, 3, 1, 16)
  assert len(meta['normalization']['mean']) == 1


def test_cli_names_the_corrupt_file(tmp_path):
  arrange(tmp_path / 'images', 'garbage')
  config = folder_config(tmp_path / 'images')
  out = run_cli(cli_args(config, tmp_path / 'w'))
  assert out.returncode == 2, out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'train/a/bad.png is not a readable' in last
  assert 'Traceback' not in out.stderr
