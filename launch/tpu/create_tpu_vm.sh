#!/usr/bin/env bash
# Create a Cloud TPU VM slice directly (on-demand or Spot), then print its workers.
#
#   PROJECT=my-proj ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 TPU_NAME=starcaster \
#       launch/tpu/create_tpu_vm.sh
#
# A direct create fails at once when the zone has no capacity; queued_resource.sh waits in
# line instead (and is the only way to get large slices). Then run setup_and_run.sh.
# Delete with:  gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --project "$PROJECT"
#
# Which types a zone offers:  gcloud compute tpus accelerator-types list --zone "$ZONE"
set -euo pipefail

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-west4-a}"
TPU_NAME="${TPU_NAME:-starcaster-tpu}"
# v5litepod-N (v5e, N chips; N > 8 is multi-host), v6e-N, v5p-N (N = 2 x chips), v4-N
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"     # empty: the base image for ACCELERATOR_TYPE (below)
SPOT="${SPOT:-0}"                          # 1: Spot VM (cheaper, pre-emptible: the trainer
                                           # checkpoints on SIGTERM and resumes from WORKDIR)
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"     # needs read/write on the GCS bucket of WORKDIR

if [[ -z "${PROJECT}" ]]; then
  echo "set PROJECT (or: gcloud config set project ...)" >&2
  exit 1
fi

if [[ -z "${RUNTIME_VERSION}" ]]; then
  case "${ACCELERATOR_TYPE}" in
    v6e-*)       RUNTIME_VERSION="v2-alpha-tpuv6e" ;;
    v5litepod-*) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*)       RUNTIME_VERSION="v2-alpha-tpuv5" ;;
    v4-*)        RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
    *) echo "unknown ACCELERATOR_TYPE ${ACCELERATOR_TYPE}: set RUNTIME_VERSION" >&2; exit 1 ;;
  esac
fi

args=(
  --project="${PROJECT}"
  --zone="${ZONE}"
  --accelerator-type="${ACCELERATOR_TYPE}"
  --version="${RUNTIME_VERSION}"
)
if [[ "${SPOT}" == "1" ]]; then
  args+=(--spot)
fi
if [[ -n "${SERVICE_ACCOUNT}" ]]; then
  args+=(--service-account="${SERVICE_ACCOUNT}" --scopes=https://www.googleapis.com/auth/cloud-platform)
fi

echo "creating ${TPU_NAME}: ${ACCELERATOR_TYPE} (${RUNTIME_VERSION}) in ${PROJECT}/${ZONE}"
gcloud compute tpus tpu-vm create "${TPU_NAME}" "${args[@]}"

# One line per worker (host); setup_and_run.sh reaches all of them with --worker=all.
gcloud compute tpus tpu-vm describe "${TPU_NAME}" --project="${PROJECT}" --zone="${ZONE}" \
  --format='table(state, acceleratorType, networkEndpoints[].ipAddress.list():label=WORKER_IPS)'
