"""What a run writes besides checkpoints: the metrics history (JSON lines)."""
import json
import os

import jax


class MetricsHistory:
  """WORKDIR/metrics.jsonl, one JSON object per log or evaluation.

  On resume, records past the restored step (written after the checkpoint
  the run resumes from) are dropped, so the file tells one consistent story.
  Only process 0 writes.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.enabled = jax.process_index() == 0
    if self.enabled and os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f
                if line.strip() and json.loads(line)['step'] <= resume_step]
      with open(self.path + '.tmp', 'w') as f:
        f.writelines(kept)
      os.replace(self.path + '.tmp', self.path)

  def write(self, record: dict):
    if self.enabled:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def read_history(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
