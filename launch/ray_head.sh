#!/usr/bin/env bash
# Start the Ray head on this node. Usage: launch/ray_head.sh [PORT]   (then: rltune train r.yaml cluster.address=auto)
# Token auth (RAY_AUTH_MODE=token): Ray reads the cluster's shared secret from RAY_AUTH_TOKEN, else the file at
# RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. This creates that file (mode 600) if none exists; every worker
# node needs the same token (launch/README.md: "The Ray token").
set -euo pipefail
PORT=${1:-6379}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}   # keep it on: without it anyone who reaches the port runs code
if [ "$RAY_AUTH_MODE" = token ]; then
  (umask 077 && ray get-auth-token --generate >/dev/null)
fi
IP=${RAY_NODE_IP:-$(hostname -I | awk '{print $1}')}
ray start --head --node-ip-address="$IP" --port="$PORT" --include-dashboard=false
echo "head at $IP:$PORT — on each worker node: copy this node's ${RAY_AUTH_TOKEN_PATH:-~/.ray/auth_token} to the"
echo "same path there (or export RAY_AUTH_TOKEN), then run: launch/ray_worker.sh $IP:$PORT"
