//! User regular expressions (an HTTP rule's method, path and host): the one place they are
//! validated and compiled, for the engine, the proxy's NPDS decoder and the xDS translation.
//!
//! Cilium's proxy matches them with RE2 against the whole value. membrane compiles each
//! as one anchored group, `^(?:PATTERN)$`, after checking that the pattern parses on its
//! own: without that check `a)|(.*` would become `^(?:a)|(.*)$`, whose second branch
//! matches every value. Go's RE2, which Cilium validates with, rejects such a pattern as
//! unbalanced, and so does this module.
//!
//! The compiled program is bounded ([`SIZE_LIMIT`]) so that a policy cannot make every
//! proxy build a huge automaton, and so that what membrane accepts stays close to what a
//! stock Envoy accepts from the RBAC translation (Envoy refuses RE2 programs above 100
//! instructions by default, `re2.max_program_size.error_level`).

use regex::{Regex, RegexBuilder};

/// Largest compiled program a user regex may have, in bytes of the `regex` crate's
/// automaton (its `size_limit`).
///
/// Chosen against Envoy's default RE2 program-size limit of 100 instructions, measured on
/// the same patterns with Envoy 1.40: ASCII patterns near that limit (`[a-z]{100}`: 102
/// instructions; a UUID path `/users/[0-9a-f-]{36}`: 112) compile to 3-8 KiB here, while
/// `.` costs about 1 KiB per occurrence here against 2 RE2 instructions (`.{30}` is 62
/// instructions and 30 KiB), so 32 KiB sits inside the band where Envoy's limit falls.
/// Every regex of the 200 policies in `shared/corpus/cnp` fits with room to spare (the
/// largest, `/cloudcity.DoorManager/RequestMaintenance`, needs 2,408 bytes). Unicode
/// classes are large here (`\w` alone is about 50 KiB, where RE2 reads it as ASCII):
/// `[0-9A-Za-z_]` says what RE2 means and fits.
pub const SIZE_LIMIT: usize = 32 * 1024;

/// Why a user regex is refused; the messages name the pattern and what was wrong (the
/// caller prefixes the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegexError {
    /// The pattern is not one complete regular expression.
    #[error("{pattern:?} is not a valid RE2 regular expression ({detail}); a pattern must be one complete expression, matched against the whole value")]
    Syntax {
        /// The pattern as written.
        pattern: String,
        /// The parser's complaint.
        detail: String,
    },
    /// The compiled program is larger than [`SIZE_LIMIT`].
    #[error("{pattern:?} exceeds the compiled size limit of {limit} bytes for a regular expression (Envoy's RE2 limit is 100 instructions); simplify it, e.g. fewer repetitions of `.` or ASCII classes like [0-9A-Za-z_] instead of \\w")]
    TooBig {
        /// The pattern as written.
        pattern: String,
        /// The limit it exceeds.
        limit: usize,
    },
}

/// The pattern as it is matched: one group anchored at both ends. The xDS translation
/// writes this form, so a consumer that searches instead of matching the whole value
/// (a partial-match `safe_regex`) still decides as the engine does.
pub fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// Validates `pattern` on its own and compiles it to match whole values only.
pub fn compile(pattern: &str) -> Result<Regex, RegexError> {
    // Parse the pattern alone first: a pattern that only parses once wrapped (it closes
    // the group early) is not one expression.
    regex_syntax::Parser::new()
        .parse(pattern)
        .map_err(|e| RegexError::Syntax {
            pattern: pattern.to_owned(),
            detail: last_line(&e.to_string()),
        })?;
    RegexBuilder::new(&anchored(pattern))
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => RegexError::TooBig {
                pattern: pattern.to_owned(),
                limit,
            },
            other => RegexError::Syntax {
                pattern: pattern.to_owned(),
                detail: last_line(&other.to_string()),
            },
        })
}

/// The parser's messages end with the reason after a caret diagram of the pattern.
fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_value_and_one_group() {
        let r = compile("GET|HEAD").unwrap();
        assert!(r.is_match("GET") && r.is_match("HEAD"));
        assert!(!r.is_match("GETX") && !r.is_match("XHEAD"));
        for bad in ["a)|(.*", "(a", "a)", "\\", "[a", "a{2,1}"] {
            match compile(bad) {
                Err(RegexError::Syntax { pattern, .. }) => assert_eq!(pattern, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let e = compile("a)|(.*").unwrap_err().to_string();
        assert!(e.contains("unopened group"), "{e}");
    }

    #[test]
    fn size_limit_is_named() {
        let e = compile(".{100}").unwrap_err();
        assert_eq!(
            e,
            RegexError::TooBig {
                pattern: ".{100}".into(),
                limit: SIZE_LIMIT
            }
        );
        assert!(e.to_string().contains("32768 bytes"), "{e}");
        assert!(compile("/cloudcity.DoorManager/RequestMaintenance").is_ok());
    }
}
