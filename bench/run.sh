#!/usr/bin/env bash
# `make bench`: every component's benchmark, one after the other; each writes its own
# bench/results/<component>-<date>.md.
set -euo pipefail
cd "$(dirname "$0")"
./proxy.sh
./policy.sh
./xds.sh
./sockmap.sh
./tcpath.sh policy
./tcpath.sh clusterip
./tcpath.sh crossnode
./prefilter.sh
./mesh.sh
