#!/usr/bin/env bash
# Evaluates a checkpoint of a workdir on one GPU and prints the result as the
# last line (JSON). launch/evaluate.sh --help for usage.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LAUNCH_NAME=evaluate.sh
LAUNCH_SUMMARY='Evaluates a checkpoint of DIR on a whole split, on one GPU; the last line
printed is {"split", "accuracy", "loss", "num_examples", "step", "accuracy_std",
"members", "ensemble"} (accuracy and loss: means over the members).
Give the config the run was trained with (without --workdir, its default
workdir runs/NAME); --config.data.dir=... points at the data.'
LAUNCH_OPTIONS_HELP='  --checkpoint=WHICH   best (validation accuracy; default), best_loss, latest
                       or a step number
  --split=SPLIT        test (default), val or train
  --gpu=ID             the GPU to use: CUDA_VISIBLE_DEVICES=ID (default: the
                       first of CUDA_VISIBLE_DEVICES if set, else 0)'
LAUNCH_OWN_OPTIONS='checkpoint split gpu'
checkpoint='best'
split='test'
gpu=''
launch_own_option() {
  case $1 in
    checkpoint) checkpoint=$2 ;;
    split) split=$2 ;;
    gpu) gpu=$2 ;;
  esac
}

launch_parse_args "$@"
[[ -z $LAUNCH_WORKDIR || -d $LAUNCH_WORKDIR ]] || launch_die "workdir not found: $LAUNCH_WORKDIR"
launch_one_gpu "$gpu"
launch_env_defaults
launch_main_command --mode=evaluate "--checkpoint=$checkpoint" "--split=$split"
launch_run "${LAUNCH_COMMAND[@]}"
