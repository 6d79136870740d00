"""Stopping a run cleanly: SIGTERM (preemption, a job's time limit) or SIGINT
(Ctrl-C) becomes a flag the training loop polls after every step, so it saves
a checkpoint of the current step and ends with Interrupted instead of dying
mid-step. With the host at most the pacer's depth of steps ahead of the
devices (pacing.py: 1 on a CPU, 2 on a GPU), the save comes at most depth + 1
steps after the signal.

Several processes must stop at the same step. SIGTERM goes to JAX's
preemption service (on by default with jax.distributed): the processes agree
on a step through the coordination service in the background, and
`multihost_utils.reached_preemption_sync_point` says, at every step and
without a collective, when it is reached. SIGINT (rare on a cluster) is
agreed on at log steps with one all-gather, as is SIGTERM if the service is
off. Outside the main thread (a notebook's worker thread, say) no handler can
be installed: the run is then stopped only by its end or by an exception.
"""
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class Interrupted(Exception):
  """SIGTERM or SIGINT arrived; a checkpoint of the current step was saved."""

  def __init__(self, signum: int, step: int, directory: str,
               steps_after: int | None = None):
    self.signum, self.step, self.steps_after = signum, step, steps_after
    after = '' if steps_after is None else f' ({steps_after} after the signal)'
    super().__init__(f'stopped by {signal.Signals(signum).name} at step '
                     f'{step}{after}; checkpoint saved in {directory}; rerun '
                     'the same command to resume')


def _preemption_service_on() -> bool:
  """Whether jax.distributed started JAX's preemption service. JAX has no
  public query; should the private one move, SIGTERM falls back to our own
  handler, agreed at log steps like SIGINT."""
  try:
    from jax._src import distributed  # pylint: disable=import-outside-toplevel
    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False


class StopSignals:
  """Turns SIGTERM/SIGINT into a stop the loop polls (`stop_requested`).

  `last_done` is the loop's last finished step; a handler notes it, so the
  stop can say how many steps ran after the signal (`steps_after`).
  """

  def __enter__(self):
    self.signum, self.last_done, self._done_at_signal = 0, 0, None
    self._previous, self._sync_point = {}, False
    if threading.current_thread() is not threading.main_thread():
      return self  # signal.signal works only there.
    self._sync_point = jax.process_count() > 1 and _preemption_service_on()
    # With the preemption service, SIGTERM is JAX's: a handler of ours would
    # replace its notifier.
    ours = (signal.SIGINT,) if self._sync_point else (signal.SIGTERM,
                                                      signal.SIGINT)
    self._previous = {s: signal.signal(s, self._handle) for s in ours}
    return self

  def _handle(self, signum, frame):
    del frame
    if not self.signum:
      self.signum, self._done_at_signal = signum, self.last_done

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def stop_requested(self, step: int, log_step: bool) -> int:
    """The signal that stops every process after `step` (0: go on). Called
    after every step, by every process."""
    if jax.process_count() == 1:
      return self.signum
    if (self._sync_point
        and multihost_utils.reached_preemption_sync_point(step)):
      self.signum = self.signum or signal.SIGTERM
      return signal.SIGTERM
    if log_step:  # A collective: every process calls it at the same steps.
      return int(np.max(multihost_utils.process_allgather(
          np.int32(self.signum))))
    return 0

  def steps_after(self, step: int) -> int | None:
    """Steps that ran after this process's signal, up to `step`."""
    return None if self._done_at_signal is None else step - self._done_at_signal
