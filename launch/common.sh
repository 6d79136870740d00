# shellcheck shell=bash
# Shared by the launchers in launch/: argument parsing, environment defaults,
# dry-run printing and the final exec. Sourcing it defines functions and a few
# LAUNCH_* variables; it runs nothing.
#
# A launcher sets LAUNCH_NAME, LAUNCH_SUMMARY, LAUNCH_OPTIONS_HELP (and maybe
# LAUNCH_ENV_HELP), LAUNCH_OWN_OPTIONS (its options that take a value; it then
# defines launch_own_option NAME VALUE) and LAUNCH_MAIN_OPTIONS (resnet_jax.main
# flags it passes through); calls launch_parse_args "$@"; sets up environment
# and command with the helpers below; and ends with launch_run.

LAUNCH_NAME=launch
LAUNCH_DRY_RUN=0
case ${DRY_RUN:-0} in
  1 | true | yes) LAUNCH_DRY_RUN=1 ;;
esac
LAUNCH_CONFIG=''
LAUNCH_WORKDIR=''
LAUNCH_PASS=()      # arguments passed through to resnet_jax.main, in order
LAUNCH_SHOWN=()     # environment variables printed by --dry-run, in order
LAUNCH_OWN_OPTIONS=''
LAUNCH_MAIN_OPTIONS=''
LAUNCH_ENV_HELP=''  # launcher-specific lines for the environment section of --help
# resnet_jax.main flags that every training launcher passes through.
# shellcheck disable=SC2034  # used by the launchers that source this file
LAUNCH_TRAIN_FLAGS='stop_at_step coordinator_address num_processes process_id'

# One line on stderr, exit status 2 (the same contract as resnet_jax.main).
launch_die() {
  printf '%s: error: %s\n' "$LAUNCH_NAME" "$*" >&2
  exit 2
}

launch_usage() {
  cat <<EOF
usage: $LAUNCH_NAME --config=FILE [--workdir=DIR] [options] [--config.KEY=VALUE ...]

$LAUNCH_SUMMARY

options:
  --config=FILE        a configs/*.py file (required)
  --workdir=DIR        checkpoints, config.json and metrics.jsonl (default:
                       runs/NAME for --config=.../NAME.py, as resnet_jax.main)
$LAUNCH_OPTIONS_HELP
  --dry-run            print the environment and the command, one per line,
                       and exit without running anything (or DRY_RUN=1)
  -h, --help           print this help and exit
  --config.KEY=VALUE   override a config key; passed to resnet_jax.main as is
  -- ARGS...           pass ARGS to resnet_jax.main unchecked

environment:
  PYTHON               interpreter (default: python3); run from the repository
                       root or install the package (pip install -e .)
${LAUNCH_ENV_HELP}  The launchers set these only where you have not (why: launch/common.sh):
  XLA_PYTHON_CLIENT_MEM_FRACTION=.90, TF_CPP_MIN_LOG_LEVEL=1, and for several
  GPUs XLA_FLAGS+=--xla_gpu_enable_latency_hiding_scheduler=true.
EOF
}

# Whether word $1 is in the space-separated list $2.
launch_in_list() {
  case " $2 " in
    *" $1 "*) return 0 ;;
  esac
  return 1
}

# Parses the command line into LAUNCH_CONFIG, LAUNCH_WORKDIR, LAUNCH_DRY_RUN,
# LAUNCH_PASS and the launcher's own options; exits on --help or a bad option.
launch_parse_args() {
  local arg name value
  while (($# > 0)); do
    arg=$1
    shift
    case $arg in
      -h | --help)
        launch_usage
        exit 0
        ;;
      --dry-run)
        LAUNCH_DRY_RUN=1
        continue
        ;;
      --)
        LAUNCH_PASS+=("$@")
        break
        ;;
      --config.*)
        LAUNCH_PASS+=("$arg")
        continue
        ;;
      --?*) ;;
      -?*) launch_die "unknown option $arg (see --help)" ;;
      *) launch_die "unexpected argument '$arg'; write config overrides as --config.KEY=VALUE (see --help)" ;;
    esac
    name=${arg%%=*}
    name=${name#--}
    if [[ $name != config && $name != workdir ]] &&
      ! launch_in_list "$name" "$LAUNCH_OWN_OPTIONS $LAUNCH_MAIN_OPTIONS"; then
      launch_die "unknown option --$name (see --help)"
    fi
    if [[ $arg == *=* ]]; then
      value=${arg#*=}
    elif (($# > 0)); then
      value=$1
      shift
    else
      launch_die "option --$name needs a value"
    fi
    case $name in
      config) LAUNCH_CONFIG=$value ;;
      workdir) LAUNCH_WORKDIR=$value ;;
      *)
        if launch_in_list "$name" "$LAUNCH_OWN_OPTIONS"; then
          launch_own_option "$name" "$value"
        else
          LAUNCH_PASS+=("--$name=$value")
        fi
        ;;
    esac
  done
  [[ -n $LAUNCH_CONFIG ]] || launch_die "--config=FILE is required (for example --config=configs/resnet_conv.py)"
  # config_flags accepts FILE:ARGS; only FILE has to exist.
  [[ -f ${LAUNCH_CONFIG%%:*} ]] || launch_die "config file not found: ${LAUNCH_CONFIG%%:*}"
}

# Exports $1=$2 unless $1 is already set (even to ''); --dry-run prints it.
launch_default() {
  if [[ -z ${!1+set} ]]; then
    export "$1=$2"
  fi
  launch_show "$1"
}

# Sets $1=$2 whatever it was; --dry-run prints it.
launch_set() {
  export "$1=$2"
  launch_show "$1"
}

# Prints variable $1 in --dry-run (and the run log) if it is set.
launch_show() {
  if [[ -n ${!1+set} ]] && ! launch_in_list "$1" "${LAUNCH_SHOWN[*]-}"; then
    LAUNCH_SHOWN+=("$1")
  fi
}

# Adds flag $1 (--name=value) to XLA_FLAGS unless XLA_FLAGS already sets --name.
launch_add_xla_flag() {
  local name=${1%%=*}
  case " ${XLA_FLAGS:-} " in
    *" $name="* | *" $name "*) ;;
    *) export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$1" ;;
  esac
  launch_show XLA_FLAGS
}

# Environment defaults for every launcher.
launch_env_defaults() {
  # GPU memory: JAX preallocates 75% of each GPU by default. 90% gives XLA more
  # room for large batches and deep nets (the whole training set also lives on
  # the device) while leaving ~10% for CUDA, cuDNN and NCCL workspaces outside
  # XLA's pool; NVIDIA's JAX guide recommends 0.8-0.9. Left alone if you have
  # made any allocator choice: XLA_PYTHON_CLIENT_PREALLOCATE=false (to share a
  # GPU), XLA_PYTHON_CLIENT_ALLOCATOR, or XLA_CLIENT_MEM_FRACTION, the newer
  # name that jaxlib refuses to see together with XLA_PYTHON_CLIENT_MEM_FRACTION.
  local memory='XLA_PYTHON_CLIENT_PREALLOCATE XLA_PYTHON_CLIENT_ALLOCATOR XLA_CLIENT_MEM_FRACTION'
  local name chosen=''
  for name in $memory; do
    if [[ -n ${!name+set} ]]; then chosen=1; fi
  done
  if [[ -z $chosen ]]; then
    launch_default XLA_PYTHON_CLIENT_MEM_FRACTION .90
  fi
  for name in XLA_PYTHON_CLIENT_MEM_FRACTION $memory; do
    launch_show "$name"
  done
  # C++ logging of XLA (and TensorFlow, should a data source import it before
  # JAX): drop INFO lines, keep warnings and errors. `import jax` sets the same
  # default, too late for anything imported earlier; 0 brings INFO back.
  launch_default TF_CPP_MIN_LOG_LEVEL 1
  launch_show XLA_FLAGS
}

# Extra XLA flags for one process driving several GPUs (all-reduce over NCCL).
launch_data_parallel_defaults() {
  # Off by default in XLA (a [Stable] flag). Lets XLA's scheduler overlap the
  # gradient all-reduce with the backward pass still computing; recommended by
  # JAX's "GPU performance tips" and set in NVIDIA's JAX containers. No effect
  # on a single GPU, so train_gpu.sh and evaluate.sh do not add it.
  launch_add_xla_flag --xla_gpu_enable_latency_hiding_scheduler=true
}

# CUDA_VISIBLE_DEVICES for one GPU: --gpu=$1 if given, else the first GPU you
# already exposed through CUDA_VISIBLE_DEVICES (a scheduler's choice), else 0.
launch_one_gpu() {
  local gpu=$1
  if [[ -z $gpu ]]; then
    gpu=${CUDA_VISIBLE_DEVICES:-0}
    gpu=${gpu%%,*}
    gpu=${gpu:-0}
  fi
  [[ $gpu != *,* ]] || launch_die "--gpu takes one device, not '$gpu'; train_all_gpus.sh --gpus=LIST drives several"
  launch_set CUDA_VISIBLE_DEVICES "$gpu"
}

# Quotes $1 for a shell only where it needs quoting.
launch_quote() {
  local plain='^[A-Za-z0-9_./:=,+@%-]+$'
  if [[ $1 =~ $plain ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# The python command: $PYTHON -m resnet_jax.main --config [--workdir] ARGS...
# and the pass-through arguments; without --workdir resnet_jax.main picks
# runs/NAME itself. (The ${array[@]+...} forms keep bash < 4.4, which
# calls an empty array unbound, working under set -u.)
launch_main_command() {
  # shellcheck disable=SC2034  # used by the launchers that source this file
  LAUNCH_COMMAND=("${PYTHON:-python3}" -m resnet_jax.main
    "--config=$LAUNCH_CONFIG" ${LAUNCH_WORKDIR:+"--workdir=$LAUNCH_WORKDIR"} "$@"
    ${LAUNCH_PASS[@]+"${LAUNCH_PASS[@]}"})
}

# Prints `export NAME=VALUE` per shown variable, then the command: a script
# that bash can run as is.
launch_print() {
  local name word line=''
  for name in ${LAUNCH_SHOWN[@]+"${LAUNCH_SHOWN[@]}"}; do
    printf 'export %s=%s\n' "$name" "$(launch_quote "${!name}")"
  done
  for word in "$@"; do
    line+="${line:+ }$(launch_quote "$word")"
  done
  printf '%s\n' "$line"
}

# --dry-run: prints and exits 0. Otherwise logs the same lines to stderr and
# replaces the shell with the command.
launch_run() {
  if ((LAUNCH_DRY_RUN)); then
    launch_print "$@"
    exit 0
  fi
  launch_print "$@" >&2
  exec "$@"
}
