//! Privileged: attach refuses what it must refuse, with errors that say
//! which path and why, and leaves nothing behind.

mod common;

use std::path::Path;

use membrane_datapath::{cgroup2_mount, Datapath, DatapathSettings, Error};

fn bpffs_dir(tag: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/bpf").join(format!("membrane-test-err-{}-{tag}", std::process::id()))
}

#[test]
fn refuses_the_root_cgroup() {
    let _env = common::Env::new(); // makes sure cgroup2 and bpffs are mounted
    let root = cgroup2_mount().unwrap();
    let dir = bpffs_dir("root");
    let err = Datapath::attach(&dir, &root, &DatapathSettings::default()).unwrap_err();
    assert!(matches!(err, Error::RootCgroup(_)), "{err}");
    assert!(err.to_string().contains("cgroup v2 root"), "{err}");
    assert!(!dir.exists(), "nothing pinned");
}

#[test]
fn refuses_a_path_that_is_not_a_cgroup() {
    let dir = bpffs_dir("notcg");
    let err = Datapath::attach(&dir, Path::new("/tmp"), &DatapathSettings::default()).unwrap_err();
    assert!(matches!(err, Error::NotCgroup2(_)), "{err}");
    assert_eq!(err.to_string(), "/tmp: not a cgroup v2 directory");
}

#[test]
fn refuses_a_pin_dir_outside_bpffs() {
    let env = common::Env::new();
    let dir = std::env::temp_dir().join(format!("membrane-test-notbpffs-{}", std::process::id()));
    let err = Datapath::attach(&dir, &env.cgroup, &DatapathSettings::default()).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, Error::NotBpffs(_)), "{err}");
    assert!(err.to_string().contains("not on a bpf filesystem"), "{err}");
    env.wait_detached();
}

#[test]
fn open_without_pins_says_so() {
    let err = Datapath::open(bpffs_dir("none")).unwrap_err();
    assert!(matches!(err, Error::NotAttached(_)), "{err}");
}
