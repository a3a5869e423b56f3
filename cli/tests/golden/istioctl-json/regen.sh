#!/bin/sh
# Regenerates */want/: what istioctl's -o json (and -o yaml) prints for each
# input dump (envoy/: a real Envoy's, taken by capture.sh; edge/: written by
# hand, with the value forms jsonpb treats specially), with Go's own jsonpb
# (see main.go). Needs Go and Debian's golang-google-protobuf-dev,
# golang-github-golang-protobuf-1-5-dev and golang-k8s-sigs-yaml-dev, and
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
bin=$(mktemp -d /tmp/istioctl-json-XXXXXX)
trap 'rm -rf "$bin"' EXIT
cd "$here"
GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$bin/istioctl-json" main.go
for d in envoy edge; do
	clusters=$d/clusters.json
	[ -f "$clusters" ] || clusters=-
	rm -rf "$d/want"
	mkdir -p "$d/want"
	"$bin/istioctl-json" "$desc" "$d/config_dump.json" "$clusters" "$d/want"
	echo "wrote $here/$d/want"
done
