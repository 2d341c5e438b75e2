#!/usr/bin/env bash
# Join a Ray cluster as a worker node. Usage: launch/ray_worker.sh HEAD_IP:PORT
set -euo pipefail
HEAD=${1:?usage: ray_worker.sh HEAD_IP:PORT}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
ray start --address="$HEAD" ${RAY_NODE_IP:+--node-ip-address="$RAY_NODE_IP"}
