"""Errors caused by the user's input: main prints them as one line and exits 2."""


class UserError(Exception):
  """Bad input (config, data, checkpoint): shown without a traceback."""


class ConfigError(UserError):
  pass


class DataError(UserError):
  pass


class CheckpointError(UserError):
  pass
