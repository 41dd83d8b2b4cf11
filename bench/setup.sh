#!/usr/bin/env bash
# Install the load generators the bench drives (Debian packages): h2load (nghttp2-client) and wrk.
# Idempotent: does nothing when both are already on PATH. Needs root (apt-get).
set -euo pipefail

missing=()
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -eq 0 ]; then
    echo "bench/setup.sh: h2load and wrk already installed"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "bench/setup.sh: installed ${missing[*]}"
