"""The installed package's metadata: GPU extras track the jax pin, and the
jax in this environment is one the pins admit (CI runs both ends)."""
import importlib.metadata as metadata
import re

import jax
from packaging.specifiers import SpecifierSet


def requirements(extra=None):
  found = {}
  for line in metadata.metadata('resnet_jax').get_all('Requires-Dist'):
    spec, _, marker = line.partition(';')
    if (extra is None) == ('extra ==' not in marker) and (
        extra is None or f'"{extra}"' in marker):
      name = re.match(r'[A-Za-z0-9_.\-]+(\[[^\]]*\])?', spec.strip()).group(0)
      found[name] = spec.strip()[len(name):].strip('() ')
  return found


def test_cuda_extras_pull_jax_with_the_core_range():
  jax_range = requirements()['jax']
  assert jax_range
  for cuda in ('cuda12', 'cuda13'):
    assert requirements(cuda) == {f'jax[{cuda}]': jax_range}


def test_installed_jax_is_in_the_pinned_range():
  admitted = SpecifierSet(requirements()['jax'])
  assert jax.__version__ in admitted, (jax.__version__, admitted)
  assert '0.12.1' not in admitted  # Its multi-process runs hang (setup.cfg).
