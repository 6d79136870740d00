"""The one entry point: python -m resnet_jax.main --config=FILE [--workdir=DIR]

Modes: train (resumes when the workdir has a checkpoint), evaluate, samples,
predict and plot_schedule. Without --workdir the workdir is runs/NAME, NAME
being the config file's name without .py, so `--config=configs/resnet_conv.py`
alone trains (and later resumes, or evaluates) runs/resnet_conv.
"""
import json
import os
import runpy
import sys
import threading
import traceback

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from resnet_jax import checkpoint, compile_cache, evaluate, inference, predict
from resnet_jax import preemption, reporting, train
from resnet_jax import config as config_lib
from resnet_jax.errors import UserError, exit_with

MODES = ('train', 'evaluate', 'samples', 'predict', 'plot_schedule')

config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file; override keys with --config.KEY=VALUE.',
    lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Checkpoints, config and metrics go here (default: '
                    'runs/NAME for --config=.../NAME.py).')
flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
flags.DEFINE_string('checkpoint', 'best',
                    'evaluate, samples, predict: best (validation accuracy), '
                    'best_loss, latest or a step number.')
flags.DEFINE_enum('split', 'test', ('test', 'val', 'train'),
                  'evaluate, samples: the split to use.')
flags.DEFINE_integer('stop_at_step', 0,
                     'train: stop at this step with a checkpoint (0: run to '
                     'train.steps); rerun the same command to continue.')
flags.DEFINE_bool('restart', False,
                  'train: move what the workdir holds into WORKDIR/archive-TIME/ '
                  'and start from step 0, even with another architecture.')
flags.DEFINE_string('coordinator_address', None,
                    'Multi-host: HOST:PORT of process 0. Under SLURM (more than '
                    'one task) all three multi-host flags come from its '
                    'environment.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0-based.')
flags.DEFINE_integer('num_samples', 16,
                     'samples: how many random images of --split to show.')
flags.DEFINE_integer('seed', None,
                     'samples: seed of the random pick (default: config seed).')
flags.DEFINE_string('images', None,
                    'predict: image files and/or folders, comma-separated.')
flags.DEFINE_integer('member', None,
                     'samples, predict: use member K of a multi-member run '
                     '(0-based) alone; default: the ensemble of all members '
                     '(their averaged probabilities).')
flags.DEFINE_enum('weights', 'auto', inference.WEIGHTS,
                  'evaluate, samples, predict: auto (the averaged weights '
                  'when the run kept an average, train.ema_decay, else the '
                  'raw ones), ema or raw.')
flags.DEFINE_bool('json', False,
                  'samples, predict: print one JSON object instead of a table.')
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS
RUNS = 'runs'  # Default workdirs: RUNS/NAME for configs/NAME.py.


def parse_flags(argv):
  """absl's parser, with every bad flag reported as one line and exit 2."""
  # config_flags reports a missing file only when the config is first read,
  # with a traceback, or as an unknown key of the overrides.
  for i, arg in enumerate(argv):
    path = (arg[len('--config='):] if arg.startswith('--config=') else
            argv[i + 1] if arg == '--config' and i + 1 < len(argv) else None)
    if path is not None and not os.path.isfile(path.split(':', 1)[0]):
      exit_with(f'--config={path}: no such file (the configs are in '
                'configs/ of the repository; run from its root)')
  try:
    return FLAGS(argv)
  except flags.Error as e:
    exit_with(str(e))
  except (AttributeError, KeyError):  # ml_collections: an unknown config key.
    exit_with(_unknown_config_key(argv))


def _unknown_config_key(argv) -> str:
  """Names the first --config.KEY that the config file does not define."""
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')),
              None)
  config = runpy.run_path(path)['get_config']() if path else None
  for arg in argv:
    if arg.startswith('--config.') and config is not None:
      flag = arg.split('=')[0]
      unknown = config_lib.unknown_key(config, flag[len('--config.'):], flag)
      if unknown:
        return unknown
  return 'unknown config key in ' + ' '.join(argv[1:])


def default_workdir(config_path: str) -> str:
  """runs/NAME for a config file NAME.py (config_flags' FILE:ARGS too)."""
  name = os.path.splitext(os.path.basename(config_path.split(':', 1)[0]))[0]
  return os.path.join(RUNS, name)


def workdir_flag() -> str:
  """--workdir, or the default it stands for, said on stderr (stdout
  carries the results of the other modes)."""
  if FLAGS.workdir:
    return FLAGS.workdir
  workdir = default_workdir(config_flags.get_config_filename(FLAGS['config']))
  if jax.process_index() == 0:
    print(f'workdir: {workdir} (from the config file\'s name; --workdir=DIR '
          'sets another)', file=sys.stderr, flush=True)
  return workdir


def initialize_distributed():
  """Joins the other processes of a multi-host run, if this is one."""
  if FLAGS.coordinator_address or (FLAGS.num_processes or 1) > 1:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  elif int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize()  # JAX reads SLURM's variables.


def quiet_closed_event_loops():
  """A failed checkpoint write leaves TensorStore callbacks that call into
  event loops Orbax has closed, from threads of TensorStore's own; their
  tracebacks (through sys.excepthook, at any moment) would come before the
  one error line that reports the failed save. Other threads' errors and the
  main thread's go through as before."""
  default = sys.excepthook

  def excepthook(kind, value, tb):
    frames = [frame.filename for frame in traceback.extract_tb(tb)]
    if (threading.current_thread() is not threading.main_thread()
        and any(f.endswith(os.path.join('asyncio', 'base_events.py'))
                for f in frames)):
      return
    default(kind, value, tb)
  sys.excepthook = excepthook


def main(argv):
  if len(argv) > 1:
    exit_with(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.stop_at_step < 0:
    exit_with(f'--stop_at_step={FLAGS.stop_at_step} must be >= 0')
  initialize_distributed()
  compile_cache.enable()
  logging.set_verbosity(logging.ERROR)  # Orbax is chatty below ERROR.
  # A failed save is reported as one error line (checkpoint.SaveError); its
  # ERROR logs from background threads, tracebacks included, would repeat it.
  logging.get_absl_logger().addFilter(
      lambda record: '/orbax/' not in record.pathname)
  quiet_closed_event_loops()
  workdir = workdir_flag()
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    exit_with(f'--workdir={workdir} exists and is not a folder')
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, workdir, FLAGS.stop_at_step,
                               FLAGS.restart)
    elif FLAGS.mode == 'samples':
      predict.samples(FLAGS.config, workdir, FLAGS.checkpoint,
                      FLAGS.split, FLAGS.num_samples, FLAGS.seed, FLAGS.json,
                      FLAGS.member, FLAGS.weights)
    elif FLAGS.mode == 'predict':
      predict.predict(FLAGS.config, workdir, FLAGS.checkpoint,
                      FLAGS.images, FLAGS.json, FLAGS.member, FLAGS.weights)
    elif FLAGS.mode == 'plot_schedule':
      print(reporting.write_schedule_plot(FLAGS.config, workdir))
    else:
      result = evaluate.evaluate(FLAGS.config, workdir, FLAGS.checkpoint,
                                 FLAGS.split, FLAGS.weights)
      print(json.dumps(result))
  except checkpoint.SaveError as e:
    # The failed write's leftover TensorStore callbacks print tracebacks from
    # other threads (into event loops Orbax has closed), until and at exit:
    # stderr is shut to them first, the error goes out in one write to the
    # real stderr, and the process ends at once. Logs are closed already. It
    # starts a line of its own: a traceback may have been cut mid-line (CI
    # once saw '    error: ...').
    sys.stdout.flush()
    real_stderr = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os.write(real_stderr, f'\nerror: {e}\n'.encode())
    os._exit(2)  # pylint: disable=protected-access
  except UserError as e:
    exit_with(str(e))
  except preemption.Interrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
