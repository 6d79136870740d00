"""README.md and docs/*.md against the code: a renamed flag, mode, config key or
launcher option fails here instead of in a reader's terminal.

Every `python -m resnet_jax.main ...` and `launch/...` command in a fenced
shell block (```bash, ```sh or no language; line continuations joined,
comments dropped, `&&` chains split) is checked by parsing alone, nothing
trains:
- resnet_jax.main: each flag is one of its absl flags and its value parses
  (so --mode and --split take valid choices), --config is given (--workdir
  defaults to runs/NAME), the config file exists, each --config.KEY is a key
  of that config, and the overridden config passes config.validate;
- launch/...: the script exists and accepts the options used (run with
  --dry-run, which parses everything and runs nothing), and the
  resnet_jax.main commands it prints pass the check above;
- `python FILE.py ...`: FILE exists.
Also: the configuration reference (docs/configuration.md) matches
resnet_jax/config.py, README.md stays a short front page linking every
guide, relative links point to files that exist, and no page names an issue
of a tracker the reader cannot open.
"""
import ast
import glob
import os
import re
import runpy
import shlex
import subprocess

import pytest

from resnet_jax import config as config_lib
from resnet_jax import main
from resnet_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
GUIDES = sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
REFERENCE = os.path.join(REPO, 'docs', 'configuration.md')
README_MAX_LINES = 150
SEPARATORS = ('&&', '||', ';', '|')
SHELLS = ('', 'bash', 'sh', 'shell')
ENV_ASSIGNMENT = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*=')


def read(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


# Reading commands out of markdown ---------------------------------------------


def fenced_blocks(text, shell=True):
  """(first line number, body) of every ``` fenced block: the shell blocks
  (```bash, ```sh or no language) or, with shell=False, the others."""
  blocks, body, start, language = [], None, 0, ''
  for number, line in enumerate(text.splitlines(), 1):
    if line.lstrip().startswith('```'):
      if body is None:
        body, start = [], number + 1
        language = line.strip()[3:].strip()
      else:
        if (language in SHELLS) == shell:
          blocks.append((start, '\n'.join(body)))
        body = None
    elif body is not None:
      body.append(line)
  return blocks


def shell_commands(block):
  """(line number offset, argv) of each simple command of a shell block."""
  commands, logical, first = [], '', None
  for offset, line in enumerate(block.splitlines()):
    first = offset if not logical else first
    if line.rstrip().endswith('\\'):
      logical += line.rstrip()[:-1] + ' '
      continue
    words = shlex.split(logical + line, comments=True)
    logical = ''
    argv = []
    for word in words + [';']:
      if word in SEPARATORS:
        if argv:
          commands.append((first, argv))
        argv = []
      else:
        argv.append(word)
  return commands


def documented_commands():
  """(where, argv) of every command in README.md and docs/*.md."""
  found = []
  for path in [README] + GUIDES:
    for start, block in fenced_blocks(read(path)):
      for offset, argv in shell_commands(block):
        where = f'{os.path.relpath(path, REPO)}:{start + offset}'
        found.append((where, argv))
  return found


def split_env(argv):
  """({NAME: value} of leading NAME=value words, the rest of argv)."""
  env = {}
  while argv and ENV_ASSIGNMENT.match(argv[0]):
    name, value = argv[0].split('=', 1)
    env[name] = value
    argv = argv[1:]
  return env, argv


def main_args(argv):
  """The arguments of a `... -m resnet_jax.main ARGS` command, else None."""
  for i in range(len(argv) - 1):
    if argv[i] == '-m' and argv[i + 1] == 'resnet_jax.main':
      return argv[i + 2:]
  return None


def launch_script(argv):
  """(script, arguments) of `[bash|sbatch OPTS] launch/X ARGS`, else None."""
  for i, word in enumerate(argv):
    if word.startswith('launch/'):
      return word, argv[i + 1:]
    if i == 0 and word not in ('bash', 'sbatch'):
      return None
  return None


# Checking resnet_jax.main arguments -------------------------------------------


def parse_config_value(default, text):
  """`text` as the type of the key's default, as config_flags parses it."""
  if isinstance(default, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'{text!r} is not True or False')
    return text.lower() in ('true', '1')
  if isinstance(default, (int, float)):
    return type(default)(text)
  if isinstance(default, (tuple, list)):
    return tuple(ast.literal_eval(text))
  return text


def check_overrides(config_path, overrides):
  """Problems with --config=config_path and its --config.KEY=VALUE list."""
  if not os.path.isfile(os.path.join(REPO, config_path)):
    return [f'config file not found: {config_path}']
  config = runpy.run_path(os.path.join(REPO, config_path))['get_config']()
  problems = []
  for key, value in overrides:
    node, parts = config, key.split('.')
    for part in parts[:-1]:
      node = node[part] if hasattr(node, 'keys') and part in node else None
    if node is None or not hasattr(node, 'keys') or parts[-1] not in node:
      problems.append(f'unknown config key --config.{key} in {config_path}')
      continue
    try:
      node[parts[-1]] = parse_config_value(node[parts[-1]], value)
    except (ValueError, SyntaxError) as e:
      problems.append(f'--config.{key}={value}: {e}')
  if not problems:
    try:
      config_lib.validate(config)
    except ConfigError as e:
      problems.append(f'the overridden config is invalid: {e}')
  return problems


def check_main_args(args):
  """Problems with the arguments of `python -m resnet_jax.main ARGS`."""
  problems, given, config_path, overrides = [], set(), None, []
  args = list(args)
  while args:
    arg = args.pop(0)
    if not arg.startswith('--'):
      problems.append(f'unexpected argument {arg!r}')
      continue
    name, has_value, value = arg[2:].partition('=')
    if name.startswith('config.'):
      overrides.append((name[len('config.'):], value))
      continue
    if (name not in main.FLAGS and name.startswith('no')
        and name[2:] in main.FLAGS and main.FLAGS[name[2:]].boolean):
      given.add(name[2:])  # --noFLAG
      continue
    if name not in main.FLAGS:
      problems.append(f'unknown flag --{name}')
      continue
    given.add(name)
    flag = main.FLAGS[name]
    if not has_value and not flag.boolean:
      value = args.pop(0) if args else ''
    if name == 'config':
      config_path = value
    elif has_value or not flag.boolean:
      try:
        flag.parser.parse(value)  # Enums (--mode, --split), integers, ...
      except ValueError as e:
        problems.append(f'--{name}={value}: {e}')
  problems += [f'--{name} is required' for name in ('config',)
               if name not in given]
  if config_path:
    problems += check_overrides(config_path, overrides)
  return problems


# Checking launchers -----------------------------------------------------------

# Variables the launchers read, scrubbed so the host's cannot change a dry run.
SCRUB = ('CUDA_VISIBLE_DEVICES', 'XLA_FLAGS', 'JAX_LOCAL_DEVICE_IDS',
         'DRY_RUN', 'PYTHON', 'GPUS_PER_NODE')


def check_launch(script, args, env, tmp_path):
  """Problems with `launch/SCRIPT ARGS`: options it refuses, and those of the
  resnet_jax.main commands its --dry-run prints."""
  if not os.path.isfile(os.path.join(REPO, script)):
    return [f'no such launcher: {script}']
  # evaluate.sh wants an existing workdir and depth_sweep.sh skips complete
  # runs of its root; the documented folders need not exist, or be empty.
  args = [re.sub(r'^--(workdir|root)=.*', rf'--\1={tmp_path}', a)
          for a in args]
  base = {k: v for k, v in os.environ.items()
          if k not in SCRUB and not k.startswith('SLURM_')}
  env = {**base, 'GPUS_PER_NODE': '8', **env}  # For the sbatch file.
  result = subprocess.run(['bash', script, '--dry-run', *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
  if result.returncode != 0:
    return [f'{script} --dry-run refused it: {result.stderr.strip()}']
  problems, printed = [], 0
  for line in result.stdout.splitlines():
    args = main_args(shlex.split(line, comments=True))
    if args is not None:
      printed += 1
      problems += check_main_args(args)
  if not printed:
    problems.append(f'{script} --dry-run printed no resnet_jax.main command')
  return problems


def check_command(argv, tmp_path):
  """Problems with one documented command ([] for commands not checked)."""
  env, argv = split_env(argv)
  args = main_args(argv)
  if args is not None:
    return check_main_args(args)
  launch = launch_script(argv)
  if launch:
    return check_launch(*launch, env, tmp_path)
  if len(argv) > 1 and re.match(r'^(.*/)?python3?$', argv[0]):
    script = argv[1]
    if script.endswith('.py') and not os.path.isfile(
        os.path.join(REPO, script)):
      return [f'no such file: {script}']
  return []


COMMANDS = documented_commands()


def is_checked(argv):
  argv = split_env(argv)[1]
  return main_args(argv) is not None or launch_script(argv) is not None


@pytest.mark.parametrize('where,argv', COMMANDS,
                         ids=[where for where, _ in COMMANDS])
def test_documented_command(where, argv, tmp_path):
  problems = check_command(argv, tmp_path)
  assert not problems, f'{where}: {" ".join(argv)}\n' + '\n'.join(problems)


def test_the_commands_are_found():
  """The README's first command and commands in every task guide."""
  # The README's first line: set up (venv, pip) && train.
  readme = [argv for where, argv in COMMANDS if where.startswith('README.md:')]
  assert [argv[:2] for argv in readme[:2]] == [['python3', '-m'],
                                               ['.venv/bin/pip', 'install']]
  # As short as the defaults allow: the workdir and the data are defaults.
  assert main_args(readme[2]) == ['--config=configs/resnet_conv_fast.py']
  for name in ('getting_started', 'data', 'training', 'evaluation',
               'gpus_and_clusters', 'results'):
    checked = [w for w, argv in COMMANDS
               if w.startswith(f'docs/{name}.md:') and is_checked(argv)]
    assert checked, f'no checked command in docs/{name}.md'
  launchers = {launch_script(split_env(argv)[1])[0] for _, argv in COMMANDS
               if launch_script(split_env(argv)[1])}
  assert launchers == {os.path.relpath(p, REPO) for p in glob.glob(
      os.path.join(REPO, 'launch', '*')) if not p.endswith('common.sh')}


def test_no_command_hides_in_another_block():
  """A command in a ```text or ```json block would escape the checks."""
  for path in [README] + GUIDES:
    for start, block in fenced_blocks(read(path), shell=False):
      assert 'resnet_jax.main' not in block and 'launch/' not in block, (
          f'{os.path.relpath(path, REPO)}:{start}: write commands in ```bash')


def test_readme_first_block_ends_with_the_test_command():
  """CI and newcomers read the test command from the README's first block."""
  _, block = fenced_blocks(read(README))[0]
  argvs = [argv for _, argv in shell_commands(block)]
  assert argvs[-1] == ['.venv/bin/python', '-m', 'pytest', '-q']


# The checker catches what it is for -------------------------------------------

BASE = ['--config=configs/resnet_conv.py', '--workdir=runs/x']


@pytest.mark.parametrize('args,expected', [
    (BASE + ['--config.train.stepz=5'],
     'unknown config key --config.train.stepz'),
    (BASE + ['--config.trian.steps=5'], 'unknown config key --config.trian'),
    (BASE + ['--stop_at=5'], 'unknown flag --stop_at'),
    (BASE + ['--mode=eval'], '--mode=eval'),
    (BASE + ['--split=validation'], '--split=validation'),
    (BASE + ['--config.train.steps=many'], '--config.train.steps=many'),
    (BASE + ['--config.data.source=cifar'], 'data.source'),
    (['--config=configs/resnet.py', '--workdir=x'], 'config file not found'),
    (['--workdir=runs/x'], '--config is required'),
])
def test_checker_reports_renamed_or_wrong_arguments(args, expected):
  problems = check_main_args(args)
  assert any(expected in p for p in problems), problems


def test_checker_accepts_a_valid_command():
  assert check_main_args(BASE + [
      '--mode=evaluate', '--split', 'val', '--json', '--nojson',
      '--config.train.sweep_learning_rates=(0.05,0.1)',
      '--config.train.eval_flip=True']) == []


def test_a_renamed_key_in_a_guide_fails(tmp_path):
  """End to end: a markdown block with a renamed key and a renamed launcher
  option, as a guide would hold them, is reported."""
  text = ('```bash\n'
          'python -m resnet_jax.main --config=configs/resnet_conv.py \\\n'
          '  --workdir=runs/x --config.train.stepz=100  # steps, renamed\n'
          'launch/train_gpu.sh --config=configs/resnet_conv.py '
          '--workdir=runs/x --gpuz=1\n'
          'launch/train_gpu.sh --config=configs/resnet_conv.py '
          '--workdir=runs/x --config.model.depth=20\n'
          '```\n')
  (_, block), = fenced_blocks(text)
  problems = [check_command(argv, tmp_path)
              for _, argv in shell_commands(block)]
  assert 'unknown config key --config.train.stepz' in problems[0][0]
  assert 'unknown option --gpuz' in problems[1][0]
  assert 'unknown config key --config.model.depth' in problems[2][0]


# The configuration reference --------------------------------------------------


def flatten(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'keys'):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def cell_value(cell):
  """A reference table cell (`5e-4`, `resnet`, `()`) as a Python value."""
  text = cell.strip().strip('`')
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def table_rows(text, header):
  """Rows (lists of cells) of the markdown tables whose header starts so."""
  rows, inside = [], False
  for line in text.splitlines():
    if line.startswith(header):
      inside = True
    elif inside and line.startswith('|'):
      if not line.startswith('|---'):
        rows.append([c.strip() for c in line.strip('|').split('|')])
    else:
      inside = False
  return rows


def test_configuration_reference_matches_config_py():
  rows = table_rows(read(REFERENCE), '| key | default |')
  documented = {row[0].strip('`'): row for row in rows}
  assert len(documented) == len(rows), 'a key is listed twice'
  defaults = flatten(config_lib.base_config())
  assert set(documented) == set(defaults), (
      f'missing: {sorted(set(defaults) - set(documented))}, '
      f'unknown: {sorted(set(documented) - set(defaults))}')
  for key, value in defaults.items():
    shown = cell_value(documented[key][1])
    if isinstance(value, tuple):
      shown = tuple(shown)
    assert shown == value and type(shown) is type(value), (key, shown, value)
  for key, choices in config_lib.CHOICES.items():
    for choice in choices:
      assert f'`{choice}`' in documented[key][2], (key, choice)


def test_configs_table_lists_what_each_config_changes():
  """docs/configuration.md names each configs/*.py with the keys it sets
  differently from base_config()."""
  rows = table_rows(read(REFERENCE), '| config file |')
  documented = {row[0].strip('`'): row[1] for row in rows}
  files = sorted(os.path.relpath(p, REPO) for p in glob.glob(
      os.path.join(REPO, 'configs', '*.py')))
  assert sorted(documented) == files
  base = flatten(config_lib.base_config())
  for path in files:
    config = flatten(runpy.run_path(os.path.join(REPO, path))['get_config']())
    changed = {k: v for k, v in config.items() if base.get(k) != v}
    shown = dict(item.split('=', 1) for item in re.findall(
        r'`([a-z_.]+=[^`]+)`', documented[path]))
    assert {k: cell_value(v) for k, v in shown.items()} == changed, path


def test_the_reference_lives_in_one_place():
  for path in [README] + GUIDES:
    if path != REFERENCE:
      assert not table_rows(read(path), '| key | default |'), path


# The front page and links -----------------------------------------------------


def test_readme_is_a_short_front_page_linking_every_guide():
  text = read(README)
  assert len(text.splitlines()) < README_MAX_LINES
  linked = set(re.findall(r'\]\((docs/[^)#]+\.md)', text))
  assert linked == {os.path.relpath(p, REPO) for p in GUIDES}


def github_anchor(heading):
  """The #fragment GitHub gives a markdown heading."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


def anchors(path):
  return {github_anchor(line.lstrip('#')) for line in read(path).splitlines()
          if re.match(r'^#{1,6} ', line)}


@pytest.mark.parametrize('path', [README] + GUIDES,
                         ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_point_to_existing_files(path):
  text = re.sub(r'```.*?```', '', read(path), flags=re.S)
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if re.match(r'^[a-z]+:', target):
      continue  # http(s), mailto: not checked offline.
    file, _, fragment = target.partition('#')
    full = os.path.normpath(os.path.join(os.path.dirname(path), file)
                            ) if file else path
    assert os.path.exists(full), f'{path}: broken link {target}'
    if fragment and full.endswith('.md'):
      assert fragment in anchors(full), f'{path}: no heading for {target}'


def test_github_anchor():
  assert github_anchor(' Several models in one run') == (
      'several-models-in-one-run')
  assert github_anchor(' `--mode=evaluate`: a whole split') == (
      '--modeevaluate-a-whole-split')


@pytest.mark.parametrize('path', [README] + GUIDES,
                         ids=lambda p: os.path.relpath(p, REPO))
def test_no_page_names_an_issue_of_our_tracker(path):
  """Readers cannot open the project's tracker: pages name results, commits
  and files, not "issue 30". Issues of public trackers are links."""
  text = re.sub(r'\[[^\]]*\]\(https?://[^)]*\)', '', read(path))
  found = re.findall(r'\bissues?\s+#?\d+', text, flags=re.I)
  assert not found, f'{os.path.relpath(path, REPO)}: {found}'
