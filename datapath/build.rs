//! Compiles every `bpf/bpf_<hook>.c` into `OUT_DIR/<hook>.o` with clang
//! (`-target bpf -O2 -g`, BTF included); the library embeds the objects.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let bpf_dir = manifest.join("bpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let clang = env::var("MEMBRANE_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    println!("cargo:rerun-if-env-changed=MEMBRANE_CLANG");
    // Paths relative to the package: cargo resolves them in whichever
    // checkout builds next. Absolute ones would tie a target directory
    // shared by two checkouts (CI's clone and a working tree) to the one
    // that built last, and the other would keep its stale objects.
    println!("cargo:rerun-if-changed=bpf");
    for sub in ["include", "lib"] {
        for entry in std::fs::read_dir(bpf_dir.join(sub))? {
            let name = entry?.file_name();
            println!(
                "cargo:rerun-if-changed=bpf/{sub}/{}",
                name.to_string_lossy()
            );
        }
    }

    // <asm/types.h> lives in the multiarch include dir of the *host*.
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH")?.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => bail!("no multiarch include dir known for target arch {other}"),
    };

    for hook in [
        "sockops",
        "sk_msg",
        "cgroup_connect",
        "cgroup_sockopt",
        "sk_lookup",
        "send_done",
        "node",
        "lxc",
        "overlay",
        "host",
        "svc",
        "xdp",
    ] {
        let src = bpf_dir.join(format!("bpf_{hook}.c"));
        println!("cargo:rerun-if-changed=bpf/bpf_{hook}.c");
        compile(&clang, &src, &out_dir.join(format!("{hook}.o")), multiarch)?;
    }
    Ok(())
}

fn compile(clang: &str, src: &Path, out: &Path, multiarch: &str) -> Result<()> {
    let output = Command::new(clang)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(out)
        .output()
        .with_context(|| {
            format!("running {clang} (install clang-19 and libbpf-dev: scripts/install-deps.sh)")
        })?;
    if !output.status.success() {
        bail!(
            "{clang} failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
