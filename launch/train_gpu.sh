#!/usr/bin/env bash
# Trains on one GPU: CUDA_VISIBLE_DEVICES names one device (--gpu, default the
# first one you already exposed, else 0). launch/train_gpu.sh --help for usage.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LAUNCH_NAME=train_gpu.sh
LAUNCH_SUMMARY='Trains (or resumes) on one GPU.'
LAUNCH_OPTIONS_HELP='  --gpu=ID             the GPU to use: CUDA_VISIBLE_DEVICES=ID (default: the
                       first of CUDA_VISIBLE_DEVICES if set, else 0)
  --stop_at_step=N     passed to resnet_jax.main (stop at step N; rerun resumes)'
LAUNCH_OWN_OPTIONS='gpu'
LAUNCH_MAIN_OPTIONS=$LAUNCH_TRAIN_FLAGS
gpu=''
launch_own_option() { gpu=$2; }

launch_parse_args "$@"
launch_one_gpu "$gpu"
launch_env_defaults
launch_main_command --mode=train
launch_run "${LAUNCH_COMMAND[@]}"
