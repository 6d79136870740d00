"""Errors caused by the user's input: main prints them as one line and exits 2."""
import importlib
import sys


class UserError(Exception):
  """Bad input (config, data, checkpoint): shown without a traceback."""


class ConfigError(UserError):
  pass


class DataError(UserError):
  pass


class CheckpointError(UserError):
  pass


def exit_with(message: str):
  """The command lines' contract for bad input: one `error:` line, exit 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def require(module: str, package: str, needed_for: str, instead: str = ''):
  """Imports an optional dependency, or names it in one line.

  tensorflow-datasets, grain, tensorboardX and matplotlib serve only some
  modes; a GPU image without them still trains from cifar10_binary data.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise UserError(f'{needed_for} needs the package {package} ({e}): '
                    f'pip install {package}{instead}') from None
