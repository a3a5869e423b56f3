//! Compiles Cilium's NPDS/NPHDS protos (our own rendering, in `proto/`) with
//! Debian's `protoc`, for every crate that speaks them (the control plane
//! serves them, the sidecar subscribes to them). Envoy's types are not regenerated: they map onto the
//! pre-built `envoy-types` crate through `extern_path`, so an Envoy message
//! inside a Cilium message is the very same Rust type the ADS server uses.
//! `protoc` still needs Envoy's `.proto` files to resolve imports; those ship
//! inside the `envoy-types` source package, which we locate in Cargo's
//! registry (override with `MEMBRANE_ENVOY_PROTO_DIR`). Its pre-built file
//! descriptor set and ours for the Cilium protos are embedded too: they
//! drive the proto3 JSON of membrane-xds's `/debug/config_dump` (a binary
//! that does not use them, the proxy, does not link them).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Must match the `=` pin of `envoy-types` in the workspace `Cargo.toml`.
const ENVOY_TYPES_DIR: &str = "envoy-types-0.7.7";

/// The `envoy-types` source package in Cargo's registry.
fn envoy_types_root() -> Result<PathBuf> {
    println!("cargo:rerun-if-env-changed=MEMBRANE_ENVOY_PROTO_DIR");
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let src = cargo_home.join("registry").join("src");
    let mut found = Vec::new();
    for index in std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let candidate = index?.path().join(ENVOY_TYPES_DIR);
        if candidate.is_dir() {
            found.push(candidate);
        }
    }
    found.sort();
    match found.pop() {
        Some(dir) => Ok(dir),
        None => bail!(
            "{ENVOY_TYPES_DIR} not found under {}; set MEMBRANE_ENVOY_PROTO_DIR \
             (and MEMBRANE_ENVOY_DESCRIPTORS)",
            src.display()
        ),
    }
}

fn envoy_proto_root() -> Result<PathBuf> {
    println!("cargo:rerun-if-env-changed=MEMBRANE_ENVOY_PROTO_DIR");
    match std::env::var("MEMBRANE_ENVOY_PROTO_DIR") {
        Ok(dir) => Ok(PathBuf::from(dir)),
        Err(_) => Ok(envoy_types_root()?.join("proto")),
    }
}

/// Envoy's file descriptor set as `envoy-types` ships it (every Envoy API
/// message, for the proto3 JSON rendering of `/debug/config_dump`).
fn envoy_descriptors() -> Result<PathBuf> {
    println!("cargo:rerun-if-env-changed=MEMBRANE_ENVOY_DESCRIPTORS");
    match std::env::var("MEMBRANE_ENVOY_DESCRIPTORS") {
        Ok(f) => Ok(PathBuf::from(f)),
        Err(_) => Ok(envoy_types_root()?
            .join("src")
            .join("generated")
            .join("types.bin")),
    }
}

fn main() -> Result<()> {
    let envoy = envoy_proto_root()?;
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let descriptors = envoy_descriptors()?;
    std::fs::copy(&descriptors, out.join("envoy_descriptors.bin"))
        .with_context(|| format!("copying {}", descriptors.display()))?;
    let includes: Vec<PathBuf> = vec![
        PathBuf::from("proto"),
        envoy.join("data-plane-api"),
        envoy.join("googleapis"),
        envoy.join("protoc-gen-validate"),
        envoy.join("xds"),
        envoy.join("cel-spec").join("proto"),
    ];
    let protos: Vec<PathBuf> = [
        "proto/cilium/api/npds.proto",
        "proto/cilium/api/nphds.proto",
        "proto/membrane/agent/v1/agent.proto",
        "proto/membrane/mesh/v1/mesh.proto",
        "proto/membrane/observer/v1/observer.proto",
        "proto/istio/v1/auth/ca.proto",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".envoy", "::envoy_types::pb::envoy")
        // Google's well-known types too (Istio's CA request carries a Struct): the very
        // types `envoy-types` generated, not `prost-types`, which nothing here links.
        .compile_well_known_types(true)
        .extern_path(".google", "::envoy_types::pb::google")
        .extern_path(".xds", "::envoy_types::pb::xds")
        .extern_path(".udpa", "::envoy_types::pb::udpa")
        .extern_path(".validate", "::envoy_types::pb::validate")
        .file_descriptor_set_path(out.join("cilium_descriptors.bin"))
        .compile_protos(&protos, &includes)
        .context("compiling cilium protos")?;
    Ok(())
}
