"""bench/startup.py times the phases of a real run (so a refactor that
renames them fails here, not silently in a GPU session)."""
import json
import os
import subprocess
import sys

from conftest import REPO, cli_args, tiny_config


def test_startup_timeline_names_each_phase_up_to_the_first_step(tmp_path):
  config = tiny_config(**{'train.steps': 2, 'train.eval_every': 2,
                          'train.warmup_steps': 1})
  out = tmp_path / 'startup.json'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'bench', 'startup.py'),
       f'--out={out}', '--', *cli_args(config, tmp_path / 'run')[3:]],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  report = json.loads(out.read_text())
  phases = [row['what'] for row in report['timeline']]
  for phase in ('import jax', 'data.load_splits', 'data.channel_stats',
                'train_state.create_train_state', 'first train step (trace, '
                'compile or cache, run)', 'inference.run', 'checkpoint.save'):
    assert phase in phases, phases
  first = phases.index('first train step (trace, compile or cache, run)')
  assert 0 < report['first_step_done_s'] == report['timeline'][first]['at_s']
  assert report['exit'] == 0
  assert 'process start to the end of the first step' in result.stdout
