#!/usr/bin/env bash
# Request a TPU slice as a queued resource (waits for capacity instead of failing), watch it,
# delete it.
#
#   launch/tpu/queued_resource.sh create   # queue the request
#   launch/tpu/queued_resource.sh wait     # poll until ACTIVE (exit 1 on FAILED / SUSPENDED)
#   launch/tpu/queued_resource.sh status
#   launch/tpu/queued_resource.sh delete   # the request and its TPU VM
#
# When ACTIVE, the TPU VM is called $TPU_NAME: run setup_and_run.sh with the same TPU_NAME.
set -euo pipefail

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-west4-a}"
TPU_NAME="${TPU_NAME:-starcaster-tpu}"          # the node (TPU VM) the request creates
QR_ID="${QR_ID:-${TPU_NAME}-qr}"                # the queued resource's own name
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"          # empty: chosen from ACCELERATOR_TYPE
CAPACITY="${CAPACITY:-spot}"                    # spot | reserved | on-demand
VALID_UNTIL="${VALID_UNTIL:-}"                  # e.g. 6h: give up if not provisioned by then
POLL_SECONDS="${POLL_SECONDS:-60}"

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

where=(--project="${PROJECT}" --zone="${ZONE}")

state() {
  gcloud compute tpus queued-resources describe "${QR_ID}" "${where[@]}" \
    --format='value(state.state)'
}

cmd="${1:-create}"
case "${cmd}" in
  create)
    args=(--node-id="${TPU_NAME}" --accelerator-type="${ACCELERATOR_TYPE}"
          --runtime-version="${RUNTIME_VERSION}")
    case "${CAPACITY}" in
      spot)      args+=(--spot) ;;
      reserved)  args+=(--reserved) ;;
      on-demand) ;;
      *) echo "CAPACITY must be spot, reserved or on-demand" >&2; exit 1 ;;
    esac
    if [[ -n "${VALID_UNTIL}" ]]; then
      args+=(--valid-until-duration="${VALID_UNTIL}")
    fi
    gcloud compute tpus queued-resources create "${QR_ID}" "${where[@]}" "${args[@]}"
    echo "queued ${QR_ID} (node ${TPU_NAME}); now: $0 wait"
    ;;
  wait)
    while true; do
      s="$(state)"
      echo "$(date +%H:%M:%S) ${QR_ID}: ${s}"
      case "${s}" in
        ACTIVE) break ;;
        FAILED|SUSPENDED) exit 1 ;;
      esac
      sleep "${POLL_SECONDS}"
    done
    ;;
  status)
    gcloud compute tpus queued-resources describe "${QR_ID}" "${where[@]}"
    ;;
  delete)
    # --force also deletes the TPU VM the request created.
    gcloud compute tpus queued-resources delete "${QR_ID}" "${where[@]}" --force --quiet
    ;;
  *)
    echo "usage: $0 create|wait|status|delete" >&2
    exit 2
    ;;
esac
