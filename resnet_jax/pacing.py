"""How far the host may run ahead of the devices, and how long each step took.

JAX dispatches a jitted step and returns at once; left alone, the host queues
steps until XLA's own limit (dozens on the CPU client), and whatever must wait
for the devices (a save on a stop signal, a log record) waits for the whole
queue. Pacer keeps at most `depth` steps queued: after dispatching step t it
waits for step t - depth to finish. On a GPU (depth 2) the host is slower
than a small step, so that step has long finished and the wait costs
nothing. On a CPU (depth 1) a step takes far longer than its dispatch, so one
queued step keeps the cores busy, and a stop waits for one step less.

Each step's time is taken when its end is seen: from the end of the step
before (or the end of a pause: an evaluation, a save) to its own. A step's
time therefore never includes an evaluation, and the first step after the
start, a resume or a pause (compilation, a refilled queue) is not timed.
"""
import collections
import time

import jax

# Steps the devices may have queued: enough to hide a dispatch.
DEPTH, CPU_DEPTH = 2, 1
now = time.perf_counter  # The steps' clock (a test may replace it).


def default_depth() -> int:
  return CPU_DEPTH if jax.default_backend() == 'cpu' else DEPTH


class Pacer:
  """Waits on step t - depth after step t is dispatched; reports each step's
  end to `on_done(step, seconds)` (seconds None for an untimed step)."""

  def __init__(self, on_done, depth: int | None = None, clock=None):
    self._on_done, self._clock = on_done, clock or now
    self._depth = default_depth() if depth is None else depth
    self._queued = collections.deque()  # (step, an output of that step)
    self._last_end = None  # When the previous timed stretch's last step ended.
    self.last_done = None  # The last step seen to end.

  def dispatched(self, step: int, output):
    """Step `step` was dispatched; `output` is any array it computes."""
    self._queued.append((step, output))
    while len(self._queued) > self._depth:
      self._wait(*self._queued.popleft())

  def drain(self):
    """Waits for every dispatched step (before an evaluation, a save, a stop)."""
    while self._queued:
      self._wait(*self._queued.popleft())

  def paused(self):
    """The time since the last step ended was not training (an evaluation, a
    save, a trace written): the next step is timed from now."""
    if self._last_end is not None:
      self._last_end = self._clock()

  def _wait(self, step: int, output):
    jax.block_until_ready(output)
    now = self._clock()
    seconds = None if self._last_end is None else now - self._last_end
    self._last_end, self.last_done = now, step
    self._on_done(step, seconds)
