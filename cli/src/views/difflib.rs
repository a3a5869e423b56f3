//! The unified diff istioctl prints (`github.com/pmezard/go-difflib`, a port of Python's
//! `difflib`): the same matching algorithm (Ratcliff/Obershelp longest matching blocks,
//! with the "popular line" junk heuristic for sequences of 200 lines or more), the same
//! grouping of opcodes into hunks with `context` lines around each change, and the same
//! text. A different diff algorithm (Myers) finds equally valid but different hunks, and
//! the output would not be istioctl's byte for byte; no crate implements this one.

use std::collections::{HashMap, HashSet};

/// Go-difflib's `SplitLines`: lines with their `\n`, and a `\n` added to the last one.
pub fn split_lines(s: &str) -> Vec<String> {
    let mut lines: Vec<String> = s.split_inclusive('\n').map(str::to_owned).collect();
    if s.is_empty() || s.ends_with('\n') {
        lines.push(String::new());
    }
    if let Some(last) = lines.last_mut() {
        last.push('\n');
    }
    lines
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Equal,
    Replace,
    Delete,
    Insert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpCode {
    tag: Tag,
    i1: usize,
    i2: usize,
    j1: usize,
    j2: usize,
}

/// Python's `SequenceMatcher` over lines, `autojunk` on and no junk function.
struct Matcher<'a> {
    a: &'a [String],
    b: &'a [String],
    b2j: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Matcher<'a> {
    fn new(a: &'a [String], b: &'a [String]) -> Self {
        let mut b2j: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, line) in b.iter().enumerate() {
            b2j.entry(line.as_str()).or_default().push(i);
        }
        // Lines that make up more than 1 % of a long `b` are "popular" and never start
        // a match (the heuristic is why the algorithm is fast on big dumps).
        let n = b.len();
        if n >= 200 {
            let ntest = n / 100 + 1;
            let popular: HashSet<&str> = b2j
                .iter()
                .filter(|(_, v)| v.len() > ntest)
                .map(|(k, _)| *k)
                .collect();
            for p in popular {
                b2j.remove(p);
            }
        }
        Matcher { a, b, b2j }
    }

    /// The longest matching block in `a[alo..ahi]` and `b[blo..bhi]` that starts on a
    /// line that is not popular, the earliest in `a` and then in `b` among the longest,
    /// then extended over the equal lines around it, as Python does.
    fn longest_match(
        &self,
        alo: usize,
        ahi: usize,
        blo: usize,
        bhi: usize,
    ) -> (usize, usize, usize) {
        let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
        let mut j2len: HashMap<usize, usize> = HashMap::new();
        for i in alo..ahi {
            let mut newj2len: HashMap<usize, usize> = HashMap::new();
            if let Some(js) = self.b2j.get(self.a[i].as_str()) {
                for &j in js {
                    if j < blo {
                        continue;
                    }
                    if j >= bhi {
                        break;
                    }
                    let k = j
                        .checked_sub(1)
                        .and_then(|p| j2len.get(&p))
                        .copied()
                        .unwrap_or(0)
                        + 1;
                    newj2len.insert(j, k);
                    if k > bestsize {
                        besti = i + 1 - k;
                        bestj = j + 1 - k;
                        bestsize = k;
                    }
                }
            }
            j2len = newj2len;
        }
        // With no junk function nothing is junk, so the match extends over every equal
        // line next to it, popular ones included (difflib's first pair of loops).
        while besti > alo && bestj > blo && self.a[besti - 1] == self.b[bestj - 1] {
            besti -= 1;
            bestj -= 1;
            bestsize += 1;
        }
        while besti + bestsize < ahi
            && bestj + bestsize < bhi
            && self.a[besti + bestsize] == self.b[bestj + bestsize]
        {
            bestsize += 1;
        }
        (besti, bestj, bestsize)
    }

    fn matching_blocks(&self) -> Vec<(usize, usize, usize)> {
        let (la, lb) = (self.a.len(), self.b.len());
        let mut queue = vec![(0, la, 0, lb)];
        let mut blocks = Vec::new();
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.longest_match(alo, ahi, blo, bhi);
            if k > 0 {
                blocks.push((i, j, k));
                if alo < i && blo < j {
                    queue.push((alo, i, blo, j));
                }
                if i + k < ahi && j + k < bhi {
                    queue.push((i + k, ahi, j + k, bhi));
                }
            }
        }
        blocks.sort();
        // Collapse adjacent blocks.
        let mut out: Vec<(usize, usize, usize)> = Vec::new();
        let (mut i1, mut j1, mut k1) = (0, 0, 0);
        for (i2, j2, k2) in blocks {
            if i1 + k1 == i2 && j1 + k1 == j2 {
                k1 += k2;
            } else {
                if k1 > 0 {
                    out.push((i1, j1, k1));
                }
                (i1, j1, k1) = (i2, j2, k2);
            }
        }
        if k1 > 0 {
            out.push((i1, j1, k1));
        }
        out.push((la, lb, 0));
        out
    }

    fn opcodes(&self) -> Vec<OpCode> {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        for (ai, bj, size) in self.matching_blocks() {
            let tag = match (i < ai, j < bj) {
                (true, true) => Some(Tag::Replace),
                (true, false) => Some(Tag::Delete),
                (false, true) => Some(Tag::Insert),
                (false, false) => None,
            };
            if let Some(tag) = tag {
                out.push(OpCode {
                    tag,
                    i1: i,
                    i2: ai,
                    j1: j,
                    j2: bj,
                });
            }
            i = ai + size;
            j = bj + size;
            if size > 0 {
                out.push(OpCode {
                    tag: Tag::Equal,
                    i1: ai,
                    i2: i,
                    j1: bj,
                    j2: j,
                });
            }
        }
        out
    }

    /// The opcodes in hunks with up to `n` lines of context.
    fn grouped_opcodes(&self, n: usize) -> Vec<Vec<OpCode>> {
        let mut codes = self.opcodes();
        if codes.is_empty() {
            codes.push(OpCode {
                tag: Tag::Equal,
                i1: 0,
                i2: 1,
                j1: 0,
                j2: 1,
            });
        }
        if let Some(c) = codes.first_mut().filter(|c| c.tag == Tag::Equal) {
            c.i1 = c.i1.max(c.i2.saturating_sub(n));
            c.j1 = c.j1.max(c.j2.saturating_sub(n));
        }
        if let Some(c) = codes.last_mut().filter(|c| c.tag == Tag::Equal) {
            c.i2 = c.i2.min(c.i1 + n);
            c.j2 = c.j2.min(c.j1 + n);
        }
        let nn = n + n;
        let mut groups = Vec::new();
        let mut group = Vec::new();
        for mut c in codes {
            if c.tag == Tag::Equal && c.i2 - c.i1 > nn {
                group.push(OpCode {
                    i2: c.i2.min(c.i1 + n),
                    j2: c.j2.min(c.j1 + n),
                    ..c
                });
                groups.push(std::mem::take(&mut group));
                c.i1 = c.i1.max(c.i2.saturating_sub(n));
                c.j1 = c.j1.max(c.j2.saturating_sub(n));
            }
            group.push(c);
        }
        let unchanged = group.len() == 1 && group[0].tag == Tag::Equal;
        if !group.is_empty() && !unchanged {
            groups.push(group);
        }
        groups
    }
}

/// `start,length` of a hunk as unified diffs print it (1-based; an empty range names the
/// line before it).
fn range(start: usize, stop: usize) -> String {
    let mut beginning = start + 1;
    let length = stop - start;
    if length == 1 {
        return beginning.to_string();
    }
    if length == 0 {
        beginning -= 1;
    }
    format!("{beginning},{length}")
}

/// The unified diff of `a` (named `from`) and `b` (named `to`) with `context` lines, as
/// go-difflib's `GetUnifiedDiffString`; empty when they are equal.
pub fn unified_diff(a: &[String], b: &[String], from: &str, to: &str, context: usize) -> String {
    let m = Matcher::new(a, b);
    let mut out = String::new();
    for (n, group) in m.grouped_opcodes(context).iter().enumerate() {
        if n == 0 {
            out.push_str(&format!("--- {from}\n+++ {to}\n"));
        }
        let (first, last) = (group[0], group[group.len() - 1]);
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(first.i1, last.i2),
            range(first.j1, last.j2)
        ));
        for c in group {
            if c.tag == Tag::Equal {
                for line in &a[c.i1..c.i2] {
                    out.push(' ');
                    out.push_str(line);
                }
                continue;
            }
            if matches!(c.tag, Tag::Replace | Tag::Delete) {
                for line in &a[c.i1..c.i2] {
                    out.push('-');
                    out.push_str(line);
                }
            }
            if matches!(c.tag, Tag::Replace | Tag::Insert) {
                for line in &b[c.j1..c.j2] {
                    out.push('+');
                    out.push_str(line);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        split_lines(s)
    }

    #[test]
    fn lines_split_as_go_difflib_does() {
        assert_eq!(split_lines("a\nb"), ["a\n", "b\n"]);
        assert_eq!(split_lines("a\n"), ["a\n", "\n"]);
        assert_eq!(split_lines(""), ["\n"]);
    }

    #[test]
    fn equal_inputs_have_no_diff() {
        let a = lines("x\ny\nz");
        assert_eq!(unified_diff(&a, &a, "A", "B", 7), "");
    }

    /// The example of Python's difflib documentation (`unified_diff` with `n=3`).
    #[test]
    fn a_changed_line_is_one_hunk_with_its_context() {
        let a = lines("one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten");
        let b = lines("one\ntwo\nthree\nfour\nFIVE\nsix\nseven\neight\nnine\nten\neleven");
        // Expected: Python's `difflib.unified_diff(a, b, from, to, n=N, lineterm="\n")`.
        assert_eq!(
            unified_diff(&a, &b, "Istiod Clusters", "Envoy Clusters", 3),
            "--- Istiod Clusters\n+++ Envoy Clusters\n@@ -2,9 +2,10 @@\n two\n three\n four\n-five\n+FIVE\n six\n seven\n eight\n nine\n ten\n+eleven\n"
        );
        assert_eq!(
            unified_diff(&a, &b, "A", "B", 1),
            "--- A\n+++ B\n@@ -4,3 +4,3 @@\n four\n-five\n+FIVE\n six\n@@ -10 +10,2 @@\n ten\n+eleven\n"
        );
    }

    /// Long inputs, where the popular-line heuristic applies (JSON dumps are full of
    /// `}` lines), diff exactly as Python's difflib, which go-difflib ports.
    #[test]
    fn long_inputs_diff_as_python_difflib_does() {
        let mut a = String::new();
        let mut b = String::new();
        for i in 0..400 {
            let line = match i % 7 {
                0 => "    }".to_string(),
                1 => "        ]".to_string(),
                _ => format!("        \"field{}\": {},", i % 13, i),
            };
            a.push_str(&line);
            a.push('\n');
            // Changes, insertions and deletions spread through b.
            match i % 53 {
                5 => b.push_str("        \"changed\": true,\n"),
                17 => {}
                29 => {
                    b.push_str(&line);
                    b.push_str("\n    }\n");
                }
                _ => {
                    b.push_str(&line);
                    b.push('\n');
                }
            }
        }
        let (la, lb) = (split_lines(&a), split_lines(&b));
        let ours = unified_diff(&la, &lb, "Istiod Listeners", "Envoy Listeners", 7);
        let script = "import difflib,json,sys\nd=json.load(sys.stdin)\nsys.stdout.write(''.join(difflib.unified_diff(d['a'],d['b'],'Istiod Listeners','Envoy Listeners',n=7,lineterm='\\n')))";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let input = serde_json::json!({"a": la, "b": lb}).to_string();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let python = String::from_utf8(out.stdout).unwrap();
        assert!(ours.matches("@@ -").count() > 3, "{ours}");
        assert_eq!(ours, python);
    }
}
