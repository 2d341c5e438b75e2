#!/usr/bin/env bash
# Join a Ray cluster as a worker node. Usage: launch/ray_worker.sh HEAD_IP:PORT
# Needs the head's token (launch/ray_head.sh created it): RAY_AUTH_TOKEN, or the file at RAY_AUTH_TOKEN_PATH,
# or ~/.ray/auth_token.
set -euo pipefail
HEAD=${1:?usage: ray_worker.sh HEAD_IP:PORT}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$RAY_AUTH_MODE" = token ] && ! ray get-auth-token >/dev/null 2>&1; then
  echo "error: no Ray auth token on this node. Copy the head's ~/.ray/auth_token here (scp, mode 600) or" >&2
  echo "export RAY_AUTH_TOKEN=<the token>; see launch/README.md (The Ray token)." >&2
  exit 2
fi
ray start --address="$HEAD" ${RAY_NODE_IP:+--node-ip-address="$RAY_NODE_IP"}
