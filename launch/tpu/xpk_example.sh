#!/usr/bin/env bash
# Train on TPU slices in a GKE cluster with XPK (https://github.com/AI-Hypercomputer/xpk):
# XPK builds an image (BASE_IMAGE + this repository copied to /app), submits it as a JobSet
# with one pod per TPU host, and every pod runs the same command; jax.distributed.initialize()
# (--distributed) discovers the hosts, and with NUM_SLICES > 1 the slices, from the
# environment GKE sets.
#
#   pip install xpk            # also needs docker, kubectl and gcloud on this machine
#   PROJECT=my-proj ZONE=us-west4-a CLUSTER=starcaster BUCKET=my-bucket \
#       CREATE_CLUSTER=1 launch/tpu/xpk_example.sh
#   xpk workload list --cluster "$CLUSTER" --project "$PROJECT" --zone "$ZONE"
#   xpk workload delete --workload "$WORKLOAD" --cluster "$CLUSTER" --project "$PROJECT" --zone "$ZONE"
set -euo pipefail

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-west4-a}"
CLUSTER="${CLUSTER:-starcaster}"
TPU_TYPE="${TPU_TYPE:-v5litepod-256}"
NUM_SLICES="${NUM_SLICES:-1}"
CREATE_CLUSTER="${CREATE_CLUSTER:-0}"       # 1: `xpk cluster create` first (once)
CAPACITY_ARG="${CAPACITY_ARG:---spot}"      # or --on-demand, or --reservation=NAME
WORKLOAD="${WORKLOAD:-starcaster-$(date +%m%d-%H%M)}"
# Any image with Python >= 3.11. Installing at pod start (below) is fine for a try; for big
# slices bake the dependencies into your own image and drop the pip line from TRAIN_COMMAND.
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
JAX_SPEC="${JAX_SPEC:-jax[tpu]==0.10.2}"

CONFIG="${CONFIG:-configs/stage2_audio.py:paper}"
BUCKET="${BUCKET:?set BUCKET: the workdir must be on GCS, shared by all hosts}"
WORKDIR="${WORKDIR:-gs://${BUCKET}/starcaster/${WORKLOAD}}"
DATA_GCS="${DATA_GCS:-gs://${BUCKET}/starcaster/corpus}"   # copied to each pod's local disk
# NUM_SLICES > 1: put the slices on the 'data' mesh axis so that only the gradient all-reduce
# crosses the data-centre network (FSDP / tensor collectives stay inside a slice).
EXTRA_ARGS="${EXTRA_ARGS:---config.model.unet.dtype=bfloat16 --config.mesh.data=${NUM_SLICES} --config.mesh.fsdp=-1}"

if [[ -z "${PROJECT}" ]]; then
  echo "set PROJECT (or: gcloud config set project ...)" >&2
  exit 1
fi
where=(--project="${PROJECT}" --zone="${ZONE}")

if [[ "${CREATE_CLUSTER}" == "1" ]]; then
  xpk cluster create --cluster="${CLUSTER}" --tpu-type="${TPU_TYPE}" \
    --num-slices="${NUM_SLICES}" "${CAPACITY_ARG}" "${where[@]}"
fi

# A clean copy of the checkout (tracked + untracked-not-ignored files) as the image's /app:
# --script-dir would otherwise ship .venv and local workdirs.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SCRIPT_DIR="$(mktemp -d -t starcaster-xpk.XXXXXX)"
trap 'rm -rf "${SCRIPT_DIR}"' EXIT
git -C "${REPO_ROOT}" ls-files -z --cached --others --exclude-standard \
  | tar -C "${REPO_ROOT}" --null -T - -cf - | tar -C "${SCRIPT_DIR}" -xf -

# Runs in /app on every pod. The data copy uses gcsfs with the pod's (workload identity)
# credentials; a GCS FUSE mount (`xpk storage attach`) is the alternative for big corpora.
# One line (XPK pastes it into the pod spec).
TRAIN_COMMAND="pip install --quiet -e . '${JAX_SPEC}' gcsfs google-cloud-storage \
 && python -c \"import gcsfs; gcsfs.GCSFileSystem().get('${DATA_GCS}/', '/tmp/starcaster_data/', recursive=True)\" \
 && python -m launch.train --config=${CONFIG} --workdir=${WORKDIR} --distributed \
 --config.data.root=/tmp/starcaster_data ${EXTRA_ARGS}"

xpk workload create \
  --cluster="${CLUSTER}" \
  --workload="${WORKLOAD}" \
  --base-docker-image="${BASE_IMAGE}" \
  --script-dir="${SCRIPT_DIR}" \
  --tpu-type="${TPU_TYPE}" \
  --num-slices="${NUM_SLICES}" \
  "${where[@]}" \
  --command="${TRAIN_COMMAND}"

echo "submitted ${WORKLOAD}; TensorBoard: tensorboard --logdir ${WORKDIR}/tensorboard"
