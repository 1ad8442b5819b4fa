#!/usr/bin/env bash
# Install STARCaster-JAX on every worker of a TPU VM slice and train on all of them.
#
#   export PROJECT=my-proj ZONE=us-west4-a TPU_NAME=starcaster-tpu BUCKET=my-bucket
#   launch/tpu/setup_and_run.sh all      # = sync + setup + data + run
#   launch/tpu/setup_and_run.sh logs     # follow worker 0's log
#   launch/tpu/setup_and_run.sh stop     # SIGTERM: checkpoint at the next step, then exit
#
# Steps (each is also a subcommand):
#   sync   code to every worker: `git clone`/fetch of REPO_URL at REPO_REF, or (REPO_URL empty)
#          this checkout's tracked + untracked-not-ignored files, copied with scp
#   setup  uv + Python ${PYTHON_VERSION} venv with `pip install -e . jax[tpu] gcsfs`, then a
#          check that every worker sees the whole slice (jax.distributed.initialize())
#   data   copy DATA_GCS (and ENCODERS_GCS) to each worker's local disk (the Grain sources
#          read local ArrayRecord files)
#   run    `python -m launch.train ... --distributed` on all workers at once, detached (nohup),
#          checkpoints / TensorBoard in the GCS WORKDIR shared by all hosts. Re-running `run`
#          after a pre-emption resumes from the latest checkpoint in WORKDIR.
#
# Every worker runs the same command; jax.distributed.initialize() finds the coordinator and
# the process ids from the TPU metadata, and each process reads its own Grain shard.
set -euo pipefail

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-west4-a}"
TPU_NAME="${TPU_NAME:-starcaster-tpu}"

# code
REPO_URL="${REPO_URL:-}"                    # empty: copy this checkout
REPO_REF="${REPO_REF:-main}"                # branch, tag or commit of REPO_URL
REMOTE_DIR="${REMOTE_DIR:-starcaster-jax}"  # relative to the home directory on each worker
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"    # the TPU images ship 3.10; jax>=0.7 needs >=3.11
JAX_SPEC="${JAX_SPEC:-jax[tpu]==0.10.2}"    # the version the project is tested with

# run
CONFIG="${CONFIG:-configs/stage2_audio.py:paper}"   # <stage>.py:<variant>[,ablation=<name>]
RUN_NAME="${RUN_NAME:-stage2_paper}"
BUCKET="${BUCKET:-}"
WORKDIR="${WORKDIR:-}"                      # default gs://$BUCKET/starcaster/$RUN_NAME
DATA_GCS="${DATA_GCS:-}"                    # gs://.../corpus (TFDS / ArrayRecord shards)
LOCAL_DATA="${LOCAL_DATA:-/tmp/starcaster_data}"
ENCODERS_GCS="${ENCODERS_GCS:-}"            # gs://... written by `python -m launch.train_encoders`
LOCAL_ENCODERS="${LOCAL_ENCODERS:-/tmp/starcaster_encoders}"
INIT_FROM="${INIT_FROM:-}"                  # the previous stage's workdir
# More --config.x=y overrides, space separated, e.g.
#   EXTRA_ARGS="--config.model.unet.dtype=bfloat16 --config.model.unet.remat_policy=dots
#               --config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=1"
EXTRA_ARGS="${EXTRA_ARGS:---config.model.unet.dtype=bfloat16}"
LOG_FILE="${LOG_FILE:-starcaster_train.log}"   # on each worker, in the home directory
PID_FILE="${PID_FILE:-starcaster_train.pid}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [[ -z "${PROJECT}" ]]; then
  echo "set PROJECT (or: gcloud config set project ...)" >&2
  exit 1
fi
where=(--project="${PROJECT}" --zone="${ZONE}")

# Run a bash snippet on every worker in parallel (gcloud waits for all of them).
on_all() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${where[@]}" --worker=all \
    --command="set -euo pipefail; $1"
}

sync_code() {
  local dir
  dir="$(printf '%q' "${REMOTE_DIR}")"
  if [[ -n "${REPO_URL}" ]]; then
    on_all "if [ -d ${dir}/.git ]; then :; else git clone --quiet $(printf '%q' "${REPO_URL}") ${dir}; fi
            git -C ${dir} fetch --quiet origin $(printf '%q' "${REPO_REF}")
            git -C ${dir} checkout --quiet --detach FETCH_HEAD
            git -C ${dir} log -1 --format='worker '\"\$(hostname)\"': %h %s'"
  else
    local tmp tarball
    tmp="$(mktemp -d -t starcaster-src.XXXXXX)"
    tarball="${tmp}/src.tgz"
    # Tracked and untracked-not-ignored files: no .venv, no workdirs, no caches.
    git -C "${REPO_ROOT}" ls-files -z --cached --others --exclude-standard \
      | tar -C "${REPO_ROOT}" --null -T - -czf "${tarball}"
    gcloud compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:starcaster-src.tgz" "${where[@]}" \
      --worker=all
    rm -rf "${tmp}"
    on_all "mkdir -p ${dir} && tar -xzf starcaster-src.tgz -C ${dir} && rm starcaster-src.tgz"
  fi
}

setup_env() {
  local dir
  dir="$(printf '%q' "${REMOTE_DIR}")"
  on_all "cd ${dir}
          command -v uv >/dev/null || [ -x \"\$HOME/.local/bin/uv\" ] \
            || curl -LsSf https://astral.sh/uv/install.sh | sh
          export PATH=\"\$HOME/.local/bin:\$PATH\"
          [ -x .venv/bin/python ] || uv venv --quiet --python $(printf '%q' "${PYTHON_VERSION}") .venv
          uv pip install --quiet --python .venv/bin/python -e . \
            $(printf '%q' "${JAX_SPEC}") gcsfs google-cloud-storage"
  # All workers must join: this also checks the slice's interconnect.
  on_all "cd ${dir} && .venv/bin/python -c 'import jax; jax.distributed.initialize(); \
print(f\"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local \
of {jax.device_count()} {jax.devices()[0].device_kind}\")'"
}

stage_data() {
  if [[ -n "${DATA_GCS}" ]]; then
    on_all "mkdir -p $(printf '%q' "${LOCAL_DATA}") && gcloud storage rsync --recursive \
            $(printf '%q' "${DATA_GCS}") $(printf '%q' "${LOCAL_DATA}")"
  fi
  if [[ -n "${ENCODERS_GCS}" ]]; then
    on_all "mkdir -p $(printf '%q' "${LOCAL_ENCODERS}") && gcloud storage rsync --recursive \
            $(printf '%q' "${ENCODERS_GCS}") $(printf '%q' "${LOCAL_ENCODERS}")"
  fi
}

run_training() {
  local workdir="${WORKDIR}"
  if [[ -z "${workdir}" ]]; then
    if [[ -z "${BUCKET}" ]]; then
      echo "set BUCKET (or WORKDIR=gs://...): every host must see the same workdir" >&2
      exit 1
    fi
    workdir="gs://${BUCKET}/starcaster/${RUN_NAME}"
  fi
  local -a cmd=(.venv/bin/python -m launch.train "--config=${CONFIG}" "--workdir=${workdir}"
                --distributed)
  if [[ -n "${DATA_GCS}" ]]; then cmd+=("--config.data.root=${LOCAL_DATA}"); fi
  if [[ -n "${ENCODERS_GCS}" ]]; then cmd+=("--config.model.encoders_dir=${LOCAL_ENCODERS}"); fi
  if [[ -n "${INIT_FROM}" ]]; then cmd+=("--config.init_from=${INIT_FROM}"); fi
  local -a extra=()
  read -r -a extra <<< "${EXTRA_ARGS}"
  cmd+=("${extra[@]}")
  local quoted log pid
  quoted="$(printf '%q ' "${cmd[@]}")"
  log="\$HOME/$(printf '%q' "${LOG_FILE}")"
  pid="\$HOME/$(printf '%q' "${PID_FILE}")"
  echo "on every worker of ${TPU_NAME}: ${quoted}"
  # Refuse to start over a live run (the TPU chips are held by one process per host).
  on_all "cd $(printf '%q' "${REMOTE_DIR}")
          if [ -f ${pid} ] && kill -0 \"\$(cat ${pid})\" 2>/dev/null; then
            echo \"\$(hostname): a run is still alive (pid \$(cat ${pid})); stop it first\" >&2
            exit 1
          fi
          nohup ${quoted} > ${log} 2>&1 < /dev/null &
          echo \$! > ${pid}
          echo \"\$(hostname): started pid \$(cat ${pid}), log ${log}\""
  echo "follow with: $0 logs   (TensorBoard: tensorboard --logdir ${workdir}/tensorboard)"
}

follow_logs() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${where[@]}" --worker=0 \
    --command="tail -n 100 -F \$HOME/$(printf '%q' "${LOG_FILE}")"
}

stop_training() {
  # SIGTERM: the loop saves a checkpoint at the next step boundary and exits cleanly.
  on_all "p=\$HOME/$(printf '%q' "${PID_FILE}")
          if [ -f \"\$p\" ] && kill -0 \"\$(cat \"\$p\")\" 2>/dev/null; then
            kill -TERM \"\$(cat \"\$p\")\" && echo \"\$(hostname): SIGTERM sent\"
          else
            echo \"\$(hostname): not running\"
          fi"
}

case "${1:-all}" in
  sync)  sync_code ;;
  setup) setup_env ;;
  data)  stage_data ;;
  run)   run_training ;;
  logs)  follow_logs ;;
  stop)  stop_training ;;
  all)   sync_code; setup_env; stage_data; run_training ;;
  *) echo "usage: $0 [all|sync|setup|data|run|logs|stop]" >&2; exit 2 ;;
esac
