"""--mode=samples, --mode=predict and evaluate's confusion matrix."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import cli_args, run_cli, tiny_config
from resnet_jax import data, evaluate, inference, predict, train
from resnet_jax.errors import DataError


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained')
  train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir


@pytest.fixture(scope='module')
def val_split():
  return data.load_splits(tiny_config(), ('val',))['val']


@pytest.fixture(scope='module')
def images(tmp_path_factory, val_split):
  """A folder of images in several sizes and modes, two of them val images."""
  folder = tmp_path_factory.mktemp('images')
  rng = np.random.default_rng(0)
  Image.fromarray(val_split.images[0]).save(folder / 'a_val0.png')
  Image.fromarray(val_split.images[1]).save(folder / 'b_val1.png')
  Image.fromarray(rng.integers(0, 256, (48, 80, 4), np.uint8)).save(
      folder / 'c_rgba.png')
  Image.fromarray(rng.integers(0, 256, (30, 30), np.uint8)).convert('P').save(
      folder / 'd_palette.png')
  Image.fromarray(rng.integers(0, 256, (200, 120, 3), np.uint8)).save(
      folder / 'e_large.jpg')
  (folder / 'notes.txt').write_text('not an image')  # Skipped in a folder.
  return folder


def test_samples_are_deterministic_and_match_the_split(workdir, val_split,
                                                       capsys):
  config = tiny_config()
  runs = []
  for _ in range(2):
    result = predict.samples(config, str(workdir), 'latest', 'val', 6, seed=3)
    with Image.open(result['image']) as image:
      assert image.size == (3 * 180, 2 * 200)  # 3 x 2 tiles of 1.8 x 2 in.
      pixels = np.asarray(image)
    runs.append((capsys.readouterr().out, result, pixels))
  (out_a, a, pixels_a), (out_b, b, pixels_b) = runs
  assert out_a == out_b and a == b
  np.testing.assert_array_equal(pixels_a, pixels_b)
  indices = [r['index'] for r in a['samples']]
  assert len(set(indices)) == 6
  assert [r['label'] for r in a['samples']] == [
      f'class_{val_split.labels[i]}' for i in indices]
  assert a['correct'] == sum(r['prediction'] == r['label']
                             for r in a['samples'])
  for r in a['samples']:  # Truth and prediction side by side.
    assert f'{r["index"]}  {r["label"]}  {r["prediction"]}' in out_a
  other = predict.samples(config, str(workdir), 'latest', 'val', 6, seed=4)
  assert [r['index'] for r in other['samples']] != indices


def test_predict_gives_sorted_top5_as_the_pipeline_decodes(
    workdir, images, val_split, capsys):
  config = tiny_config()
  first = predict.predict(config, str(workdir), 'latest', str(images))
  second = predict.predict(config, str(workdir), 'latest',
                           f'{images}/c_rgba.png,{images}')
  # Same paths, classes and ranking; probabilities to float32 precision only:
  # 5 and 6 images are batches of different shapes, for which XLA may choose
  # other kernels and summation orders (jax 0.12 on the CPU differs in the
  # last digits), so bitwise equality across batch shapes is not promised.
  for got, want in zip(second, [first[2]] + first):
    assert got['path'] == want['path']
    assert [t['label'] for t in got['top']] == [t['label'] for t in want['top']]
    assert [t['probability'] for t in got['top']] == pytest.approx(
        [t['probability'] for t in want['top']], rel=1e-5, abs=1e-7)
  assert [r['path'].split('/')[-1] for r in first] == [
      'a_val0.png', 'b_val1.png', 'c_rgba.png', 'd_palette.png', 'e_large.jpg']
  for r in first:
    probabilities = [t['probability'] for t in r['top']]
    assert len(probabilities) == 5 == len({t['label'] for t in r['top']})
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6
    assert all(t['class'] == f'class_{t["label"]}' for t in r['top'])
  # A PNG of a validation image predicts as that image does in the split.
  state, _, meta = inference.restore(
      config, str(workdir), 'latest', train.create_mesh())
  normalization = (meta['normalization']['mean'], meta['normalization']['std'])
  _, probabilities, _ = inference.predict_split(
      state, val_split, normalization, 20, train.create_mesh())
  for n in (0, 1):
    top = first[n]['top'][0]
    assert top['label'] == int(np.argmax(probabilities[n]))
    assert top['probability'] == pytest.approx(probabilities[n].max(), rel=1e-5)
  out = capsys.readouterr().out
  assert f'{images}/a_val0.png\n  1. {first[0]["top"][0]["class"]}' in out


def test_bad_image_paths_name_the_path(workdir, images, tmp_path):
  config = tiny_config()
  with pytest.raises(DataError, match=f'{images}/notes.txt is not a readable '
                     'image'):
    predict.predict(config, str(workdir), 'latest', f'{images}/notes.txt')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(DataError, match=f'{empty} is a folder without any'):
    predict.predict(config, str(workdir), 'latest', str(empty))
  missing = tmp_path / 'missing.png'
  result = run_cli(cli_args(config, workdir, '--mode=predict',
                            f'--images={images}/a_val0.png,{missing}'))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'error: {missing}: no such image file or folder (--images)']


def test_predict_cli_prints_json(workdir, images):
  config = tiny_config()
  result = run_cli(cli_args(config, workdir, '--mode=predict', '--json',
                            '--checkpoint=latest',
                            f'--images={images}/d_palette.png'))
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  expected = predict.predict(config, str(workdir), 'latest',
                             f'{images}/d_palette.png')
  assert printed['step'] == 12
  assert printed['predictions'] == expected  # Same numbers, same order.


def test_evaluate_writes_confusion_matrix_and_per_class_accuracy(
    workdir, val_split, capsys):
  checkpoints = sorted(p.name for p in (workdir / 'checkpoints').rglob('*'))
  result = evaluate.evaluate(tiny_config(), str(workdir), 'latest', 'val')
  out = capsys.readouterr().out
  folder = workdir / 'eval' / 'val_step12'
  saved = json.loads((folder / 'per_class_accuracy.json').read_text())
  counts = np.array(saved['confusion_matrix'])
  assert counts.shape == (10, 10) and counts.sum() == 32
  assert np.trace(counts) / 32 == result['accuracy'] == saved['accuracy']
  np.testing.assert_array_equal(counts.sum(1),
                                np.bincount(val_split.labels, minlength=10))
  for row in saved['classes']:
    assert row['count'] == counts[row['label']].sum()
    assert f'{row["class"]}  ' in out
    assert f'{row["correct"]}/{row["count"]}' in out
  with Image.open(folder / 'confusion_matrix.png') as image:
    assert image.size == (700, 700)  # evaluate.confusion_figsize(10) at 100 dpi.
  assert sorted(p.name for p in (workdir / 'checkpoints').rglob('*')) == (
      checkpoints)


def test_samples_cli_matches_in_process(workdir):
  config = tiny_config()
  result = run_cli(cli_args(config, workdir, '--mode=samples', '--json',
                            '--checkpoint=latest', '--split=val',
                            '--num_samples=6', '--seed=3'))
  assert result.returncode == 0, result.stderr
  printed = json.loads(result.stdout)
  assert printed == predict.samples(config, str(workdir), 'latest', 'val', 6,
                                    seed=3)
