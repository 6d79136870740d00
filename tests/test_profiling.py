"""train.profile_steps: a jax.profiler trace of just those steps."""
import glob
import os
import threading

import pytest

from conftest import tiny_config
from resnet_jax import config as config_lib
from resnet_jax import train
from resnet_jax.errors import ConfigError


def test_a_window_of_steps_is_traced_and_nothing_without_it(tmp_path):
  config = tiny_config(**{'train.profile_steps': (4, 5)})
  train.train_and_evaluate(config, str(tmp_path / 'traced'))
  traces = glob.glob(str(tmp_path / 'traced' / 'profile' / 'plugins' /
                         'profile' / '*' / '*.xplane.pb'))
  assert len(traces) == 1
  with open(traces[0], 'rb') as f:
    assert b'jit_train_fn' in f.read()  # The train step ran inside it.
  train.train_and_evaluate(tiny_config(), str(tmp_path / 'plain'))
  assert not os.path.exists(tmp_path / 'plain' / 'profile')


@pytest.mark.parametrize('window', [(5, 3), (0, 4), (3, 13), (1,)])
def test_a_window_outside_the_run_is_refused(window):
  with pytest.raises(ConfigError, match='train.profile_steps'):
    config_lib.validate(tiny_config(**{'train.profile_steps': window}))


def test_training_from_another_thread_installs_no_signal_handler(tmp_path):
  """signal.signal works only in the main thread (a notebook may train in
  another): the run goes on without stop handlers."""
  outcome = {}

  def run():
    try:
      outcome['summary'] = train.train_and_evaluate(
          tiny_config(**{'train.steps': 3, 'train.eval_every': 3}),
          str(tmp_path / 'w'))
    except Exception as e:  # pylint: disable=broad-except
      outcome['error'] = e

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert 'error' not in outcome, outcome.get('error')
  assert outcome['summary']['step'] == 3
