"""The installed package's metadata: GPU extras track the jax pin, and the
jax in this environment is one the pins admit (CI runs both ends)."""
import importlib.metadata as metadata
import re

import jax


def requirements(extra=None):
  found = {}
  for line in metadata.metadata('resnet_jax').get_all('Requires-Dist'):
    spec, _, marker = line.partition(';')
    if (extra is None) == ('extra ==' not in marker) and (
        extra is None or f'"{extra}"' in marker):
      name = re.match(r'[A-Za-z0-9_.\-]+(\[[^\]]*\])?', spec.strip()).group(0)
      found[name] = spec.strip()[len(name):].strip('() ')
  return found


def as_tuple(version):
  return tuple(int(p) for p in re.findall(r'\d+', version)[:3])


def test_cuda_extras_pull_jax_with_the_core_range():
  jax_range = requirements()['jax']
  assert jax_range
  for cuda in ('cuda12', 'cuda13'):
    assert requirements(cuda) == {f'jax[{cuda}]': jax_range}


def test_installed_jax_is_in_the_pinned_range():
  bounds = dict((op, as_tuple(v)) for op, v in re.findall(
      r'(>=|<)\s*([\d.]+)', requirements()['jax']))
  assert bounds['>='] <= as_tuple(jax.__version__) < bounds['<']
