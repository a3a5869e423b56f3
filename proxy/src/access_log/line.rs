//! One access-log line as JSON, written straight into a reused buffer: no allocation, no
//! serializer. The line is the one the proxy has always written (through `tracing`'s JSON
//! formatter): `{"timestamp":"…Z","level":"INFO",` the fields in order, then
//! `"target":"access"}` and a newline; strings escaped as serde_json escapes them.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

/// The fields of one line, appended to its buffer in the order they are written.
pub struct Line<'a> {
    buf: &'a mut Vec<u8>,
}

impl Line<'_> {
    /// Starts a line at `now` in `buf` (which the caller has cleared); `clock` caches the
    /// formatted date and time of the current second.
    pub(super) fn start<'b>(buf: &'b mut Vec<u8>, clock: &mut Clock, now: SystemTime) -> Line<'b> {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        clock.write(buf, now);
        buf.extend_from_slice(b"\",\"level\":\"INFO\"");
        Line { buf }
    }

    /// Ends the line.
    pub(super) fn finish(self) {
        self.buf.extend_from_slice(b",\"target\":\"access\"}\n");
    }

    /// A string field.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.buf.push(b'"');
        escape(self.buf, value);
        self.buf.push(b'"');
        self
    }

    /// A field written as a string through its `Display` (an address, say).
    pub fn display(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        self.key(key);
        self.buf.push(b'"');
        // Escaped as it is formatted: nothing is formatted into a temporary String.
        let _ = write!(Escaping(self.buf), "{value}");
        self.buf.push(b'"');
        self
    }

    /// A number field.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let mut digits = [0u8; 20];
        self.buf.extend_from_slice(format_u64(value, &mut digits));
        self
    }

    fn key(&mut self, key: &str) {
        self.buf.extend_from_slice(b",\"");
        escape(self.buf, key);
        self.buf.extend_from_slice(b"\":");
    }
}

/// `value` in decimal, in the tail of `digits`.
fn format_u64(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[i..];
        }
    }
}

/// Appends `s` JSON-escaped as serde_json does: `"` and `\`, the short escapes for
/// backspace, form feed, newline, carriage return and tab, `\u00xx` for other control
/// characters; everything else (non-ASCII included) as it is.
fn escape(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        // One table load per byte: almost every byte of a record needs nothing.
        let short = ESCAPE[b as usize];
        if short == 0 {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(&[b'\\', short]);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            buf.extend_from_slice(&[b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// For each byte, the letter after the backslash that escapes it (`u`: `\u00xx`), or 0.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// A `fmt::Write` that escapes what it is given into the buffer.
struct Escaping<'a>(&'a mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s);
        Ok(())
    }
}

/// The date and time of the last second a line was written in, formatted once per second
/// (`2026-12-07T13:53:57.`); the microseconds are added per line.
#[derive(Default)]
pub(super) struct Clock {
    second: Option<i64>,
    prefix: [u8; 20],
}

impl Clock {
    /// Appends `now` as RFC 3339 in UTC with microseconds (`2026-12-07T13:53:57.123456Z`).
    fn write(&mut self, buf: &mut Vec<u8>, now: SystemTime) {
        let (secs, micros) = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_micros()),
            // Before 1970: not a clock anyone runs a proxy with.
            Err(_) => (0, 0),
        };
        if self.second != Some(secs) {
            self.prefix = civil(secs);
            self.second = Some(secs);
        }
        buf.extend_from_slice(&self.prefix);
        let mut digits = [b'0'; 6];
        let mut m = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        buf.extend_from_slice(&digits);
        buf.push(b'Z');
    }
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SS.` (UTC; years 1970 to 9999).
fn civil(secs: i64) -> [u8; 20] {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a proleptic Gregorian date (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00.";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(at: SystemTime, f: impl FnOnce(&mut Line<'_>)) -> String {
        let mut buf = Vec::new();
        let mut clock = Clock::default();
        let mut l = Line::start(&mut buf, &mut clock, at);
        f(&mut l);
        l.finish();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn a_line_is_the_json_the_tracing_formatter_wrote() {
        let at = UNIX_EPOCH + Duration::new(1_796_651_637, 123_456_789);
        let got = line(at, |l| {
            l.str("type", "Response")
                .display(
                    "src",
                    "127.0.0.1:4242".parse::<std::net::SocketAddr>().unwrap(),
                )
                .u64("status", 200)
                .u64("zero", 0)
                .u64("max", u64::MAX);
        });
        assert_eq!(
            got,
            "{\"timestamp\":\"2026-12-07T13:53:57.123456Z\",\"level\":\"INFO\",\"type\":\"Response\",\
             \"src\":\"127.0.0.1:4242\",\"status\":200,\"zero\":0,\"max\":18446744073709551615,\
             \"target\":\"access\"}\n"
        );
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let nasty = "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}j/é\u{7f}😀";
        let got = line(UNIX_EPOCH, |l| {
            l.str("path", nasty).display("host", nasty);
        });
        let want = serde_json::to_string(nasty).unwrap();
        assert!(
            got.contains(&format!("\"path\":{want},\"host\":{want}")),
            "{got}"
        );
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["path"], nasty);
        assert_eq!(v["host"], nasty);
    }

    #[test]
    fn dates_are_the_calendar_ones() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (1_709_251_199, "2024-02-29T23:59:59."),
            (4_102_444_800, "2100-01-01T00:00:00."),
            (253_402_300_799, "9999-12-31T23:59:59."),
        ] {
            assert_eq!(std::str::from_utf8(&civil(secs)).unwrap(), want, "{secs}");
        }
        // The cached second is replaced when the second changes.
        let mut clock = Clock::default();
        let mut buf = Vec::new();
        clock.write(&mut buf, UNIX_EPOCH + Duration::from_micros(1_000_007));
        buf.push(b' ');
        clock.write(&mut buf, UNIX_EPOCH + Duration::from_micros(61_999_999));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "1970-01-01T00:00:01.000007Z 1970-01-01T00:01:01.999999Z"
        );
    }
}
