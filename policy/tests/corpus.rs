//! The 200 real policies in `shared/corpus/cnp`: all valid except the four Cilium rejects.

use membrane_policy::load::parse_file;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    // shared/ sits beside the repository, in development and in CI alike.
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../shared/corpus/cnp")
}

#[test]
fn corpus_is_accepted_or_rejected_as_cilium_does() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 200, "corpus files");
    let mut invalid = Vec::new();
    let mut objects = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let objs = parse_file(&name, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!objs.is_empty(), "{name}: no policy object found");
        objects += objs.len();
        for o in objs {
            if let Err(errs) = &o.result {
                invalid.push((
                    name.clone(),
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                ));
            }
        }
    }
    invalid.sort();
    invalid.dedup_by(|a, b| a.0 == b.0);
    let names: Vec<&str> = invalid.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "cilium-cilium__examples__policies__auth__auth.yaml",
            "cilium-cilium__examples__policies__l3__match-expressions__and-statement.yaml",
            "cilium-cilium__examples__policies__l3__match-expressions__or-statement.yaml",
            "isovalent-cilium-up-and-running__chapter12__invalid-policy.yaml",
        ],
        "{invalid:#?}"
    );
    // Each rejection carries Cilium's reason.
    assert!(
        invalid[0].1.contains("unknown field `auth`"),
        "{}",
        invalid[0].1
    );
    assert!(
        invalid[1]
            .1
            .contains("\"in\" is not a valid label selector operator"),
        "{}",
        invalid[1].1
    );
    assert!(
        invalid[2]
            .1
            .contains("\"in\" is not a valid label selector operator"),
        "{}",
        invalid[2].1
    );
    assert!(
        invalid[3]
            .1
            .contains("combining toEndpoints and toEntities"),
        "{}",
        invalid[3].1
    );
    assert!(objects >= 200, "{objects} objects");
}
