#!/usr/bin/env bash
# Start the Ray head on this node. Usage: launch/ray_head.sh [PORT]   (then: rltune train r.yaml cluster.address=auto)
set -euo pipefail
PORT=${1:-6379}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}   # Ray's token auth for multi-node clusters; keep it on
IP=${RAY_NODE_IP:-$(hostname -I | awk '{print $1}')}
ray start --head --node-ip-address="$IP" --port="$PORT" --include-dashboard=false
echo "head at $IP:$PORT — workers: launch/ray_worker.sh $IP:$PORT"
