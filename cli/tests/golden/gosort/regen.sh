#!/bin/sh
# Writes go<MAJOR.MINOR>.txt: how this machine's Go orders ties in
# sort.Slice. Needs Go 1.19 or later (Debian: apt-get install golang-go).
# cli/src/views/gosort.rs checks every go*.txt here against the generator of
# that Go version (1.24 on: the new xorshift), so running this with a newer
# Go and committing the file extends the check. `make test` needs no Go.
set -eu
cd "$(dirname "$0")"
v=$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
GO111MODULE=off go run main.go > "go$v.txt"
echo "wrote $(pwd)/go$v.txt"
