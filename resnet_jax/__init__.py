"""CIFAR ResNets in JAX/Flax, from Python (docs/python_api.md):

    import resnet_jax
    model = resnet_jax.load('pretrained/resnet20_conv_fast')
    probabilities = model.predict(images)  # uint8 (N, 32, 32, 3)

The public names come from resnet_jax/api.py, imported on first use: `import
resnet_jax` alone imports neither JAX nor Flax, and `from resnet_jax import
config` (every config file) does not bring in the API's training,
checkpointing (Orbax) and inference modules.
"""
from typing import TYPE_CHECKING

__all__ = ['Classifier', 'get_config', 'load', 'train_and_evaluate']

if TYPE_CHECKING:  # Type checkers and IDEs see them; Python imports lazily.
  from resnet_jax.api import Classifier, get_config, load, train_and_evaluate


def __getattr__(name: str):
  if name in __all__:
    from resnet_jax import api  # pylint: disable=import-outside-toplevel
    return getattr(api, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))
