//! The relay's web page in a real browser: `membrane demo --stay` plays the Star Wars
//! scenario on the mini-cluster (root) with the page up, then headless Chromium loads
//! the page, and the map it rendered (the DOM after the page's scripts ran) must show the
//! xwing -> deathstar edge red and the tiefighter -> deathstar edge green. A screenshot
//! is kept under the target directory (its path is printed). SIGTERM then ends the demo,
//! which must remove its mini-cluster.

use membrane_test_support::{wait_until, ChildGuard};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The map's colours (relay/web/app.js).
const GREEN: &str = "#1e8e3e";
const RED: &str = "#d93025";

/// One edge of the rendered map: its `data-*` attributes and the strokes of its lines.
#[derive(Debug)]
struct Edge {
    src: String,
    dst: String,
    verdict: String,
    denied: u64,
    denied_l7: u64,
    strokes: Vec<String>,
}

/// The value of `name="..."` in an element's start tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(tag[at..].split('"').next()?.to_owned())
}

/// Every `<g class="edge" ...>` of a dumped DOM.
fn edges(dom: &str) -> Vec<Edge> {
    dom.split(r#"<g class="edge""#)
        .skip(1)
        .map(|g| {
            let (tag, inner) = g.split_once('>').unwrap_or((g, ""));
            let tag = format!(" {tag}");
            let inner = inner.split("</g>").next().unwrap_or("");
            let num = |n: &str| attr(&tag, n).and_then(|v| v.parse().ok()).unwrap_or(0);
            Edge {
                src: attr(&tag, "data-src-label").unwrap_or_default(),
                dst: attr(&tag, "data-dst-label").unwrap_or_default(),
                verdict: attr(&tag, "data-verdict").unwrap_or_default(),
                denied: num("data-denied"),
                denied_l7: num("data-denied-l7"),
                strokes: inner
                    .split("<path ")
                    .skip(1)
                    .filter_map(|p| attr(&format!(" {p}"), "stroke"))
                    .collect(),
            }
        })
        .collect()
}

/// Headless Chromium on `url` with `args` (its own profile in `profile`), bounded.
fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args([
            "120",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--window-size=1280,1000", "--virtual-time-budget=4000"])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run chromium (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_map_in_headless_chromium_shows_the_xwing_red_and_the_tiefighter_green() {
    let mut demo = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_membrane"))
            .args(["demo", "--stay", "--web-address", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let tag = format!("membrane-demo-{}", demo.id());
    let (tx, rx) = mpsc::channel();
    let stdout = demo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("demo: {line}");
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The page's address once step 6 is over (it printed "service map and latest flows").
    let mut seen = String::new();
    let url = wait_until(
        Duration::from_secs(600),
        Duration::from_millis(100),
        "membrane demo --stay to print the page's address after step 6",
        || {
            while let Ok(line) = rx.try_recv() {
                seen.push_str(&line);
                seen.push('\n');
                if let Some(url) = line.trim().strip_prefix("service map and latest flows: ") {
                    return Some(url.to_owned());
                }
            }
            assert!(
                demo.0.try_wait().unwrap().is_none(),
                "membrane demo --stay ended:\n{seen}"
            );
            None
        },
    );
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let profile = tempfile::tempdir().unwrap();
    let mut tries = 0;
    let (dom, found) = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        "the rendered map to show both ships' edges to the deathstar",
        || {
            tries += 1;
            let dom = chromium(profile.path(), &url, &["--dump-dom"]);
            let all = edges(&dom);
            let to_deathstar = |src: &str| {
                all.iter()
                    .find(|e| e.src == src && e.dst == "deathstar")
                    .map(|e| (e.verdict.clone(), e.denied, e.denied_l7, e.strokes.clone()))
            };
            match (to_deathstar("xwing"), to_deathstar("tiefighter")) {
                (Some(x), Some(t)) => Some((dom, [x, t])),
                _ if tries > 20 => panic!("no xwing/tiefighter -> deathstar edges in:\n{dom}"),
                _ => None,
            }
        },
    );
    let [xwing, tiefighter] = found;
    // The xwing is dropped at L3 every time: red, and only red.
    assert_eq!(xwing.0, "denied", "{dom}");
    assert!(
        !xwing.3.is_empty() && xwing.3.iter().all(|s| s == RED),
        "{xwing:?}"
    );
    // The tiefighter lands: green. Its PUT /v1/exhaust-port is refused by the sidecar
    // (when the sidecars' records are in the stream): those L7 denials, and only they,
    // add the red half of a mixed edge.
    assert!(tiefighter.3.contains(&GREEN.to_owned()), "{tiefighter:?}");
    match tiefighter.0.as_str() {
        "allowed" => assert!(tiefighter.3.iter().all(|s| s == GREEN), "{tiefighter:?}"),
        "mixed" => assert_eq!(tiefighter.1, tiefighter.2, "{tiefighter:?}"),
        other => panic!("tiefighter -> deathstar is {other}: {tiefighter:?}"),
    }
    // The table has rows too.
    assert!(dom.contains("<tbody><tr>"), "no flow rows in:\n{dom}");

    let shot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("membrane-web");
    std::fs::create_dir_all(&shot).unwrap();
    let shot = shot.join("service-map.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        profile.path(),
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{} is no PNG", shot.display());
    println!("screenshot of the page: {}", shot.display());

    // Ctrl-C's twin: the demo removes its mini-cluster and exits.
    let pid = demo.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(100),
        "membrane demo to exit on SIGTERM",
        || demo.0.try_wait().unwrap(),
    );
    assert_eq!(status.code(), Some(130), "{status}");
    let netns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!netns.contains(&tag), "{tag} left behind: {netns}");
    assert!(!Path::new("/sys/fs/bpf").join(&tag).exists());
    assert!(!std::env::temp_dir().join(&tag).exists());
}
