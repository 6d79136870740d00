"""A jax.profiler trace of a window of training steps (train.profile_steps).

Tracing the whole run from Python (`with jax.profiler.trace(...)`) also
records start-up and compilation; the window holds only the steps asked
for. The devices finish the steps before the window first, so none of them
runs inside it, and the window's own steps end before the trace is written.
The trace goes to WORKDIR/profile: TensorBoard's profile plugin or XProf
(`xprof --logdir WORKDIR/profile`) opens it, and Perfetto (ui.perfetto.dev)
opens its *.trace.json.gz.
"""
import os

import jax


class Profile:
  """Traces steps first..last (train.profile_steps = (first, last), both
  counted from 1; (0, 0): off). A resumed run traces what is left of it."""

  def __init__(self, profile_steps, workdir: str, start: int):
    first, last = profile_steps or (0, 0)
    self.first, self.last = max(first, start + 1), last
    self.directory = os.path.join(workdir, 'profile')
    self.tracing = False

  def before(self, step: int, pacer):
    """Called before step `step` is dispatched."""
    if step == self.first and self.first <= self.last:
      pacer.drain()
      jax.profiler.start_trace(self.directory)
      self.tracing = True
      pacer.paused()

  def after(self, step: int, pacer):
    """Called after step `step` is dispatched."""
    if self.tracing and step == self.last:
      pacer.drain()
      self.stop()
      pacer.paused()  # Writing the trace is not training.

  def stop(self):
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()
