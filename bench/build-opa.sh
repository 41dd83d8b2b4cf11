#!/usr/bin/env bash
# Build OPA's Envoy plugin (opa-envoy-plugin) from the Go module proxy, as DESIGN.md §7 builds
# other Go tools: a throwaway module that requires the plugin at a release and `go build`s its
# cmd. A dependency's `replace` directives are ignored this way, which is why this works where
# `go install pkg@version` may not. The binary is cached by version; nothing is committed.
#
# Why v1.15.2-envoy (OPA v1.15.x): the module proxy reachable here answers 403 "not available"
# for the newer plugin releases (v1.18.1 to v1.19.1 at the time of writing) and for some older
# ones; v1.15.2-envoy downloads and verifies against the checksum database.
#
#   bench/build-opa.sh            # prints the binary's path (builds it the first time)
#   OPA_ENVOY_VERSION=v1.15.2-envoy bench/build-opa.sh
set -euo pipefail

version="${OPA_ENVOY_VERSION:-v1.15.2-envoy}"
cache="${CALLWARDEN_BENCH_CACHE:-$HOME/.cache/callwarden/bench}"
binary="$cache/opa-envoy-plugin-$version"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
command -v go >/dev/null || { echo "build-opa.sh: no Go toolchain on PATH" >&2; exit 1; }
mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<MOD
module callwarden.bench/opaenvoy

go 1.25.0

require github.com/open-policy-agent/opa-envoy-plugin $version
MOD
cat > tools.go <<'SRC'
//go:build tools

package tools

import _ "github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin"
SRC
export GOFLAGS="-mod=mod -buildvcs=false"
go mod tidy >&2
# -p 1 and nice: the machine is shared; a slower build beats starving everyone else's tests.
nice -n 10 go build -p "${GO_BUILD_JOBS:-1}" -trimpath -ldflags "-s -w" \
    -o "$binary.tmp" github.com/open-policy-agent/opa-envoy-plugin/cmd/opa-envoy-plugin >&2
mv "$binary.tmp" "$binary"
echo "$binary"
