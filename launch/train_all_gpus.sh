#!/usr/bin/env bash
# Trains with one process driving every local GPU: resnet_jax shards each batch
# over a mesh of all devices (jax.device_count()), so no per-GPU processes.
# launch/train_all_gpus.sh --help for usage.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LAUNCH_NAME=train_all_gpus.sh
LAUNCH_SUMMARY='Trains (or resumes) data-parallel on all GPUs of this machine, one process.
train.batch_size is the global batch; it must divide by the number of GPUs.'
LAUNCH_OPTIONS_HELP='  --gpus=LIST          use only these GPUs: CUDA_VISIBLE_DEVICES=LIST, e.g. 0,1,2,3
                       (default: every GPU CUDA_VISIBLE_DEVICES leaves visible)
  --stop_at_step=N     passed to resnet_jax.main (stop at step N; rerun resumes)
  --coordinator_address=HOST:PORT, --num_processes=N, --process_id=I
                       passed to resnet_jax.main: run this on each of N machines'
LAUNCH_OWN_OPTIONS='gpus'
LAUNCH_MAIN_OPTIONS=$LAUNCH_TRAIN_FLAGS
gpus=''
launch_own_option() { gpus=$2; }

launch_parse_args "$@"
if [[ -n $gpus ]]; then
  launch_set CUDA_VISIBLE_DEVICES "$gpus"
fi
launch_show CUDA_VISIBLE_DEVICES
launch_env_defaults
launch_data_parallel_defaults
launch_main_command --mode=train
launch_run "${LAUNCH_COMMAND[@]}"
