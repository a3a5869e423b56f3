# Shared by the bench scripts (sourced, not run).
#
# The release binaries every benchmark runs, built in one cargo invocation over the whole
# workspace: the set `make build` builds, so after it (or after another bench script) this is
# a no-op. Cargo unifies a dependency's features over the packages one invocation selects,
# so a build of `-p membrane-proxy` alone compiles several dependencies, and with them the
# proxy itself under fat LTO, a second time with other features: tens of minutes on two
# cores, once per differing `-p` set.
#
# Sets and exports CARGO_TARGET_DIR (the Makefile's default when unset) and BIN_DIR (its
# release directory). Needs ROOT (the repository).

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/membrane-target}
BIN_DIR=$CARGO_TARGET_DIR/release

build_release_bins() {
  (cd "$ROOT" && cargo build --release -q --workspace --bins)
}
