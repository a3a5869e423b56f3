#!/bin/sh
# Regenerates go<VERSION>.txt: how this machine's Go orders ties in
# sort.Slice. Needs Go 1.19 or later (Debian: apt-get install golang-go);
# `make test` does not: it compares membrane's port with the committed file.
set -eu
cd "$(dirname "$0")"
v=$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
GO111MODULE=off go run main.go > "go$v.txt"
echo "wrote $(pwd)/go$v.txt"
