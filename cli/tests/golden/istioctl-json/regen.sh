#!/bin/sh
# Regenerates want/*.json, what istioctl's -o json prints for envoy/'s dump,
# with Go's own jsonpb (see main.go). Needs Go and Debian's
# golang-google-protobuf-dev and golang-github-golang-protobuf-1-5-dev and golang-k8s-sigs-yaml-dev, and
# Envoy's descriptor set as membrane uses it (envoy-types' types.bin, or
# $MEMBRANE_ENVOY_DESCRIPTORS as api/build.rs reads it). `make test` needs
# none of this: it compares membrane's output with the committed files.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
desc=${MEMBRANE_ENVOY_DESCRIPTORS:-}
if [ -z "$desc" ]; then
	v=$(sed -n 's/^envoy-types = "=\(.*\)"/\1/p' "$here/../../../../Cargo.toml")
	desc=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"envoy-types-$v/src/generated/types.bin" | head -1)
fi
mkdir -p "$here/want"
cd "$here"
GO111MODULE=off GOPATH=/usr/share/gocode go run main.go "$desc" \
	envoy/config_dump.json envoy/clusters.json want
echo "wrote $here/want"
