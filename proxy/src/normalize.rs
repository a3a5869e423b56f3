//! Request-path normalization (RFC 3986 §6.2.2): what the policy matches is exactly what the
//! upstream receives.
//!
//! Written by hand because no maintained crate does this specific, security-relevant job:
//! decode only percent-encoded *unreserved* characters, upper-case the hex of the rest,
//! remove dot segments, optionally merge slashes, and *refuse* encodings whose meaning differs
//! between parsers (`%2F`, `%5C`, `%00`, malformed escapes, raw backslashes).

use std::borrow::Cow;

/// Why a path cannot be normalized safely; the request is answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadEscape,
    /// `%2F` / `%5C`: an encoded separator means one thing to us and another to some upstreams.
    #[error("percent-encoded path separator")]
    EncodedSeparator,
    /// `%00` or another encoded control character.
    #[error("percent-encoded control character in path")]
    EncodedControl,
    /// A raw backslash, which some servers treat as `/`.
    #[error("backslash in path")]
    Backslash,
    /// The path is neither `*` nor starts with `/`.
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// A segment that is `.` or `..` once its `;parameters` are removed (`/a/..;/b`):
    /// Tomcat and Spring resolve it as a dot segment, nginx and most others as a name.
    #[error("dot segment with path parameters")]
    DotSegmentParameters,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes an origin-form path (no query). Returns the input unchanged (borrowed) when it
/// is already normal, which is the common case and costs one scan.
pub fn normalize_path(path: &str, merge_slashes: bool) -> Result<Cow<'_, str>, NormalizeError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(NormalizeError::NotAbsolute);
    }
    let mut needs_work = false;
    let mut prev = 0u8;
    for &b in bytes {
        match b {
            b'%' => needs_work = true,
            b'\\' => return Err(NormalizeError::Backslash),
            b'.' if prev == b'/' => needs_work = true,
            b'/' if prev == b'/' && merge_slashes => needs_work = true,
            _ => {}
        }
        prev = b;
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }

    // Pass 1: percent-decoding of unreserved characters; other escapes kept, hex upper-cased.
    // Bytes, not chars: the path may hold UTF-8 (pushing each byte as a char would re-encode
    // it as Latin-1). Only ASCII is added or removed, so the result stays valid UTF-8.
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(NormalizeError::BadEscape),
            };
            let v = h * 16 + l;
            match v {
                b'/' | b'\\' => return Err(NormalizeError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(NormalizeError::EncodedControl),
                _ if is_unreserved(v) => decoded.push(v),
                _ => {
                    decoded.push(b'%');
                    decoded.push(b"0123456789ABCDEF"[usize::from(h)]);
                    decoded.push(b"0123456789ABCDEF"[usize::from(l)]);
                }
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| NormalizeError::BadEscape)?;

    // Pass 2: remove dot segments (RFC 3986 §5.2.4), segment by segment.
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        // Servlet containers strip `;params` from each segment before resolving dot segments;
        // other servers keep them as part of the name. Only a segment that is a dot segment
        // without its parameters reads differently, so that one is refused and every other
        // segment is matched and forwarded as sent.
        if let Some((name, _)) = seg.split_once(';') {
            if name == "." || name == ".." {
                return Err(NormalizeError::DotSegmentParameters);
            }
        }
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            "" if merge_slashes => {}
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    // A path that was only dot segments or ended in one names a directory: keep the slash.
    if trailing_slash && !result.ends_with('/') {
        result.push('/');
    }
    if result.is_empty() {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok: &[(&str, bool, &str)] = &[
            ("/", false, "/"),
            ("/v1/x", false, "/v1/x"),
            ("/v1/./x", false, "/v1/x"),
            ("/v1/../admin", false, "/admin"),
            ("/../../etc", false, "/etc"),
            ("/v1/%2e%2e/admin", false, "/admin"),
            ("/v1/%2E%2E/admin", false, "/admin"),
            ("/%76%31/x", false, "/v1/x"),
            ("/a%7eb", false, "/a~b"),
            ("/a%20b", false, "/a%20b"),
            ("/a%c3%a9", false, "/a%C3%A9"),
            ("/a/b/..", false, "/a/"),
            ("/a/.", false, "/a/"),
            ("/a//b", false, "/a//b"),
            ("/a//b", true, "/a/b"),
            ("//a///b/", true, "/a/b/"),
            ("/.well-known/x", false, "/.well-known/x"),
            ("/a/..b", false, "/a/..b"),
            ("*", false, "*"),
            ("/a;x/../b", false, "/b"),
            ("/a/..x;/b", false, "/a/..x;/b"),
            ("/a/b;jsessionid=1", false, "/a/b;jsessionid=1"),
            ("/caf%c3%a9/\u{e9}/./x", false, "/caf%C3%A9/\u{e9}/x"),
        ];
        for (input, merge, want) in ok {
            assert_eq!(
                normalize_path(input, *merge).as_deref(),
                Ok(*want),
                "{input}"
            );
        }
        let bad: &[(&str, NormalizeError)] = &[
            ("/a%2fb", NormalizeError::EncodedSeparator),
            ("/a%2Fb", NormalizeError::EncodedSeparator),
            ("/a%5cb", NormalizeError::EncodedSeparator),
            ("/a%00b", NormalizeError::EncodedControl),
            ("/a%0d%0a", NormalizeError::EncodedControl),
            ("/a%", NormalizeError::BadEscape),
            ("/a%g0", NormalizeError::BadEscape),
            ("/a%2", NormalizeError::BadEscape),
            ("/a\\..\\b", NormalizeError::Backslash),
            ("a/b", NormalizeError::NotAbsolute),
            ("/public/..;/admin", NormalizeError::DotSegmentParameters),
            ("/public/..;x=1/admin", NormalizeError::DotSegmentParameters),
            ("/public/.;/admin", NormalizeError::DotSegmentParameters),
            (
                "/public/%2e%2e;/admin",
                NormalizeError::DotSegmentParameters,
            ),
            ("/public/..;", NormalizeError::DotSegmentParameters),
        ];
        for (input, want) in bad {
            assert_eq!(normalize_path(input, false), Err(want.clone()), "{input}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize_path("/v1/x/y.z", false),
            Ok(Cow::Borrowed(_))
        ));
    }
}
