#!/usr/bin/env bash
# He et al. 2015, Fig. 6: trains plain and residual CIFAR nets of several depths
# with one recipe, one run after the other on one GPU, then draws them on
# shared axes (resnet_jax.compare). launch/depth_sweep.sh --help for usage.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LAUNCH_NAME=depth_sweep.sh
root=''
depths='20,32,44,56'
shortcut='zeropad'
gpu=''

sweep_usage() {
  cat <<EOF
usage: $LAUNCH_NAME --root=DIR [options] [--config.KEY=VALUE ...]

Trains plain nets (configs/cnn.py) and ResNets (configs/resnet_zeropad.py as
in the paper; --shortcut=conv: configs/resnet_conv.py) at each depth with the
same recipe and budget, one after the other, in ROOT/plain-DEPTH and
ROOT/resnet_SHORTCUT-DEPTH, then writes ROOT/depth_sweep.png (training and
validation error against epochs) and ROOT/depth_sweep.md (the results table).
Complete runs are skipped; rerunning resumes the others from their checkpoints.

options:
  --root=DIR           the folder of the runs and the comparison (required)
  --depths=LIST        comma-separated depths, each 6n+2 (default: 20,32,44,56;
                       the paper adds 110)
  --shortcut=KIND      zeropad (default) or conv: the ResNets' shortcuts
  --steps=N            training steps of every run (--config.train.steps=N;
                       default: the config's)
  --gpu=ID             the GPU to use: CUDA_VISIBLE_DEVICES=ID (default: the
                       first of CUDA_VISIBLE_DEVICES if set, else 0)
  --dry-run            print the environment and the commands, one per line
                       (complete runs as comments), and run nothing (or
                       DRY_RUN=1)
  -h, --help           print this help and exit
  --config.KEY=VALUE   override a config key of every run, e.g.
                       --config.data.source=cifar10_binary --config.data.dir=DIR

environment:
  PYTHON               interpreter (default: python3); run from the repository
                       root or install the package (pip install -e .)
  The launchers set XLA_PYTHON_CLIENT_MEM_FRACTION=.90 and
  TF_CPP_MIN_LOG_LEVEL=1 where you have not (why: launch/common.sh).
EOF
}

while (($# > 0)); do
  arg=$1
  shift
  case $arg in
    -h | --help) sweep_usage && exit 0 ;;
    --dry-run) LAUNCH_DRY_RUN=1 && continue ;;
    --config.model.num_layers=* | --config.model.name=* | --config.model.shortcut=*)
      launch_die "${arg%%=*} is what the sweep varies; use --depths and --shortcut"
      ;;
    --config.*) LAUNCH_PASS+=("$arg") && continue ;;
    --root | --depths | --shortcut | --steps | --gpu)
      (($# > 0)) || launch_die "option $arg needs a value"
      value=$1
      shift
      ;;
    --root=* | --depths=* | --shortcut=* | --steps=* | --gpu=*) value=${arg#*=} ;;
    -*) launch_die "unknown option ${arg%%=*} (see --help)" ;;
    *) launch_die "unexpected argument '$arg'; write config overrides as --config.KEY=VALUE (see --help)" ;;
  esac
  case ${arg%%=*} in
    --root) root=$value ;;
    --depths) depths=$value ;;
    --shortcut) shortcut=$value ;;
    --gpu) gpu=$value ;;
    --steps)
      [[ $value =~ ^[1-9][0-9]*$ ]] || launch_die "--steps=$value must be a positive integer"
      LAUNCH_PASS+=("--config.train.steps=$value")
      ;;
  esac
done
[[ -n $root ]] || launch_die "--root=DIR is required"
[[ ! -e $root || -d $root ]] || launch_die "--root=$root exists and is not a folder"
[[ $shortcut == zeropad || $shortcut == conv ]] || launch_die "--shortcut=$shortcut must be zeropad or conv"
IFS=, read -r -a depth_list <<<"$depths"
((${#depth_list[@]} > 0)) || launch_die "--depths is empty"
seen=''
for depth in "${depth_list[@]}"; do
  if ! [[ $depth =~ ^[1-9][0-9]*$ ]] || ((depth < 8 || (depth - 2) % 6 != 0)); then
    launch_die "depth '$depth' is not 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)"
  fi
  ! launch_in_list "$depth" "$seen" || launch_die "depth $depth is given twice"
  seen+=" $depth"
done

# The steps every run must reach: the last --config.train.steps given, as
# resnet_jax.main reads them; none given: the config's (read from config.json).
target_steps=''
for arg in ${LAUNCH_PASS[@]+"${LAUNCH_PASS[@]}"}; do
  if [[ $arg == --config.train.steps=* ]]; then target_steps=${arg#*=}; fi
done

# Whether workdir $1 holds a run that reached target_steps. report.md alone is
# not enough: a run stopped by --stop_at_step writes one too.
run_complete() {
  [[ -f $1/report.md ]] || return 1
  "${PYTHON:-python3}" - "$1" "$target_steps" <<'EOF'
import json, os, sys
workdir, steps = sys.argv[1:]
try:
  with open(os.path.join(workdir, 'config.json')) as f:
    steps = int(steps or json.load(f)['train']['steps'])
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    reached = [json.loads(line)['step'] for line in f if line.strip()][-1]
except (OSError, ValueError, KeyError, IndexError):
  sys.exit(1)  # Unreadable: let resnet_jax.main resume or report it.
sys.exit(0 if reached >= steps else 1)
EOF
}

# --dry-run prints to stdout; a real sweep logs the same lines to stderr.
sweep_say() {
  if ((LAUNCH_DRY_RUN)); then "$@"; else "$@" >&2; fi
}

# Configs by path from the repository root when run from there, else absolute.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
configs=$repo/configs
[[ $repo != "$PWD" ]] || configs=configs

launch_one_gpu "$gpu"
launch_env_defaults
# Depth by depth, plain then residual, so that an interrupted sweep already
# compares the shallow nets; the table lists plain nets first.
plain=() residual=()
for depth in "${depth_list[@]}"; do
  for family in plain "resnet_$shortcut"; do
    LAUNCH_WORKDIR=$root/$family-$depth
    if [[ $family == plain ]]; then
      LAUNCH_CONFIG=$configs/cnn.py
      plain+=("$LAUNCH_WORKDIR")
    else
      LAUNCH_CONFIG=$configs/$family.py
      residual+=("$LAUNCH_WORKDIR")
    fi
    if run_complete "$LAUNCH_WORKDIR"; then
      sweep_say echo "# $LAUNCH_WORKDIR is complete: skipped"
      continue
    fi
    launch_main_command --mode=train "--config.model.num_layers=$(((depth - 2) / 6))"
    sweep_say launch_print "${LAUNCH_COMMAND[@]}"
    LAUNCH_SHOWN=() # The exports go out once, before the first command.
    if ((!LAUNCH_DRY_RUN)); then
      "${LAUNCH_COMMAND[@]}" # A failure ends the sweep; rerunning resumes.
    fi
  done
done
launch_run "${PYTHON:-python3}" -m resnet_jax.compare "${plain[@]}" "${residual[@]}" \
  "--out=$root/depth_sweep.png" "--table=$root/depth_sweep.md"
