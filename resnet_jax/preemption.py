"""Stopping a run cleanly: SIGTERM (preemption, a job's time limit) or SIGINT
(Ctrl-C) becomes a flag the training loop polls, so it saves a checkpoint of
the current step and ends with Interrupted instead of dying mid-step."""
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Interrupted(Exception):
  """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum = signum
    super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}; '
                     f'checkpoint saved in {directory}; rerun the same command '
                     'to resume')


class StopSignals:
  """Turns SIGTERM/SIGINT (preemption, Ctrl-C) into a flag the loop polls."""

  def __enter__(self):
    self.signum = 0
    self._previous = {s: signal.signal(s, self._handle)
                      for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def any_process_stopping(self) -> int:
    """The signal if this or any other process got one (a collective)."""
    if jax.process_count() == 1:
      return self.signum
    return int(np.max(multihost_utils.process_allgather(np.int32(self.signum))))
