//! Protobuf messages as istioctl prints them: Go's legacy `jsonpb.Marshaler`
//! (`github.com/golang/protobuf/jsonpb`, which Istio's `protomarshal` calls for every
//! `ToJSON*` and `Marshal`). With an indent (`ToJSONWithIndent`: the proxy-status diffs,
//! `proxy-config bootstrap|secret -o json`) its text is not serde's pretty JSON: fields in
//! declaration order (a set oneof member where the oneof's first field is declared),
//! lowerCamelCase names, 64-bit integers quoted, an empty message as `{` and `}` with an
//! empty line between them, an `Any` with `@type` first, well-known types in their JSON
//! forms, Go's string escaping and float formatting, and Go's own bookkeeping of
//! indentation (a `Struct`'s entries sit two levels below the line that opens it). Without
//! an indent (`protomarshal.Marshal`, under istioctl's `-o json` of clusters, listeners,
//! routes and endpoints) it is the same text with no whitespace at all. A unified diff of
//! two such texts is only istioctl's when every line is, so the printer is written out
//! here, and checked against Go's jsonpb on real Envoy dumps
//! (`cli/tests/golden/istioctl-json/`).

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

/// `msg` as jsonpb prints it with `indent` per level (no trailing newline); an empty
/// `indent` gives jsonpb's compact form.
pub fn print(msg: &DynamicMessage, indent: &str) -> String {
    let mut w = Writer {
        out: String::new(),
        indent,
    };
    w.message(msg, "", None);
    w.out
}

struct Writer<'a> {
    out: String,
    indent: &'a str,
}

const WRAPPERS: [&str; 9] = [
    "DoubleValue",
    "FloatValue",
    "Int64Value",
    "UInt64Value",
    "Int32Value",
    "UInt32Value",
    "BoolValue",
    "StringValue",
    "BytesValue",
];

fn well_known(d: &MessageDescriptor) -> Option<&str> {
    d.full_name().strip_prefix("google.protobuf.")
}

impl Writer<'_> {
    fn pretty(&self) -> bool {
        !self.indent.is_empty()
    }

    /// A line break and `levels` indents below `at` (nothing when compact).
    fn newline(&mut self, at: &str, levels: usize) {
        if self.pretty() {
            self.out.push('\n');
            self.out.push_str(at);
            for _ in 0..levels {
                self.out.push_str(self.indent);
            }
        }
    }

    /// `"name":`, with a space when indenting.
    fn key(&mut self, quoted: &str) {
        self.out.push_str(quoted);
        self.out.push(':');
        if self.pretty() {
            self.out.push(' ');
        }
    }

    /// `{`, the fields, `}`; `at` is the indent of the line the message starts on.
    fn message(&mut self, m: &DynamicMessage, at: &str, type_url: Option<&str>) {
        let d = m.descriptor();
        if type_url.is_none() {
            if let Some(name) = well_known(&d) {
                if self.well_known(m, name, at) {
                    return;
                }
            }
        }
        self.out.push('{');
        if self.pretty() {
            self.out.push('\n');
        }
        let mut first = true;
        if let Some(url) = type_url {
            if self.pretty() {
                self.out.push_str(at);
                self.out.push_str(self.indent);
            }
            self.key("\"@type\"");
            self.out.push_str(&go_string(url));
            first = false;
        }
        // Declaration order (the descriptor's own list), not field number order.
        let fields: Vec<FieldDescriptor> = d
            .descriptor_proto()
            .field
            .iter()
            .filter_map(|f| d.get_field(u32::try_from(f.number()).ok()?))
            .collect();
        let mut i = 0;
        while i < fields.len() {
            let mut fd = fields[i].clone();
            match fd.containing_oneof() {
                // A oneof prints its set member at its first field's place.
                Some(o) if !o.is_synthetic() => {
                    i += o.fields().count();
                    match o.fields().find(|f| m.has_field(f)) {
                        Some(set) => fd = set,
                        None => continue,
                    }
                }
                _ => {
                    i += 1;
                    if !m.has_field(&fd) {
                        continue;
                    }
                }
            }
            if !first {
                self.out.push(',');
                if self.pretty() {
                    self.out.push('\n');
                }
            }
            first = false;
            if self.pretty() {
                self.out.push_str(at);
                self.out.push_str(self.indent);
            }
            self.key(&format!("\"{}\"", fd.json_name()));
            self.value(&fd, &m.get_field(&fd), at);
        }
        self.newline(at, 0);
        self.out.push('}');
    }

    /// The JSON forms of google.protobuf's types; false for one printed as a message.
    fn well_known(&mut self, m: &DynamicMessage, name: &str, at: &str) -> bool {
        let d = m.descriptor();
        let num = |n: u32| m.get_field_by_number(n).map(|v| v.into_owned());
        match name {
            "Any" => self.any(m, at),
            n if WRAPPERS.contains(&n) => {
                let fd = d.get_field(1).expect("a wrapper has field 1");
                self.value(&fd, &m.get_field(&fd), at);
            }
            "Duration" | "Timestamp" => {
                let secs = num(1).and_then(|v| v.as_i64()).unwrap_or(0);
                let nanos = num(2).and_then(|v| v.as_i32()).unwrap_or(0);
                let text = if name == "Duration" {
                    duration(secs, nanos)
                } else {
                    timestamp(secs, nanos)
                };
                self.out.push_str(&format!("\"{text}\""));
            }
            // jsonpb hands the list or map to its field printer at the message's own
            // level, which indents entries two levels below it.
            "Struct" | "ListValue" => {
                let fd = d.get_field(1).expect("field 1");
                self.value(&fd, &m.get_field(&fd), at);
            }
            "Value" => match d
                .oneofs()
                .next()
                .and_then(|o| o.fields().find(|f| m.has_field(f)))
            {
                Some(fd) if fd.name() == "null_value" => self.out.push_str("null"),
                Some(fd) => self.value(&fd, &m.get_field(&fd), at),
                None => self.out.push_str("null"),
            },
            "FieldMask" => {
                let paths: Vec<String> = num(1)
                    .and_then(|v| v.as_list().map(<[Value]>::to_vec))
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| p.as_str().map(camel))
                    .collect();
                self.out.push_str(&go_string(&paths.join(",")));
            }
            _ => return false,
        }
        true
    }

    fn any(&mut self, m: &DynamicMessage, at: &str) {
        let url = m
            .get_field_by_number(1)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let bytes = m
            .get_field_by_number(2)
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default();
        let name = url.rsplit('/').next().unwrap_or(&url);
        let inner = m
            .descriptor()
            .parent_pool()
            .get_message_by_name(name)
            .and_then(|d| DynamicMessage::decode(d, bytes).ok());
        let Some(inner) = inner else {
            // istioctl resolves a type it does not know to an empty placeholder.
            self.out.push('{');
            self.newline(at, 1);
            self.key("\"@type\"");
            self.out.push_str(&go_string(&url));
            self.newline(at, 0);
            self.out.push('}');
            return;
        };
        if well_known(&inner.descriptor()).is_none() {
            self.message(&inner, at, Some(&url));
            return;
        }
        let deeper = format!("{at}{}", self.indent);
        self.out.push('{');
        self.newline(at, 1);
        self.key("\"@type\"");
        self.out.push_str(&go_string(&url));
        self.out.push(',');
        self.newline(at, 1);
        self.key("\"value\"");
        self.message(&inner, &deeper, None);
        self.newline(at, 0);
        self.out.push('}');
    }

    /// A field's value; `at` is the indent of the message that holds the field (lists and
    /// maps put their entries two levels below it, their closing bracket one).
    fn value(&mut self, fd: &FieldDescriptor, v: &Value, at: &str) {
        let inner = format!("{at}{}", self.indent);
        match v {
            Value::List(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.newline(at, 2);
                    self.single(fd, item, &inner);
                }
                self.newline(at, 1);
                self.out.push(']');
            }
            Value::Map(entries) => {
                let value_fd = match fd.kind() {
                    Kind::Message(entry) => entry.map_entry_value_field(),
                    _ => fd.clone(),
                };
                // Go sorts by the key's value: numbers numerically, false before true.
                let mut keys: Vec<&MapKey> = entries.keys().collect();
                keys.sort();
                self.out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.newline(at, 2);
                    self.key(&go_string(&map_key(k)));
                    self.single(&value_fd, &entries[*k], &inner);
                }
                self.newline(at, 1);
                self.out.push('}');
            }
            v => self.single(fd, v, at),
        }
    }

    /// One value; `at` as for [`Writer::value`] (a message goes one level below it).
    fn single(&mut self, fd: &FieldDescriptor, v: &Value, at: &str) {
        let text = match v {
            Value::Message(m) => {
                let inner = format!("{at}{}", self.indent);
                return self.message(m, &inner, None);
            }
            Value::Bool(b) => b.to_string(),
            Value::I32(n) => n.to_string(),
            Value::U32(n) => n.to_string(),
            Value::I64(n) => format!("\"{n}\""),
            Value::U64(n) => format!("\"{n}\""),
            Value::F32(f) => go_float(f64::from(*f), format!("{f}"), format!("{f:e}")),
            Value::F64(f) => go_float(*f, format!("{f}"), format!("{f:e}")),
            Value::String(s) => go_string(s),
            Value::Bytes(b) => {
                use base64::Engine;
                go_string(&base64::engine::general_purpose::STANDARD.encode(b))
            }
            Value::EnumNumber(n) => match fd.kind() {
                Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => "null".into(),
                Kind::Enum(e) => match e.get_value(*n) {
                    Some(ev) => go_string(ev.name()),
                    None => n.to_string(),
                },
                _ => n.to_string(),
            },
            Value::List(_) | Value::Map(_) => return self.value(fd, v, at),
        };
        self.out.push_str(&text);
    }
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

/// snake_case to lowerCamelCase (a FieldMask path).
fn camel(s: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Go's `encoding/json` text of a string: `\"`, `\\`, `\n`, `\r`, `\t`, other control
/// characters as `\u00XX`, and `<`, `>`, `&`, U+2028, U+2029 escaped.
pub fn go_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `encoding/json` float: shortest digits, positional unless tiny or huge, where
/// it writes `1e-07` as `1e-7` and keeps the exponent's sign.
fn go_float(f: f64, plain: String, sci: String) -> String {
    if f.is_nan() {
        return "\"NaN\"".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        }
        .into();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        return match sci.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => sci,
        };
    }
    plain
}

/// Seconds and nanoseconds with 0, 3, 6 or 9 fractional digits, as jsonpb writes them.
fn fraction(secs: i64, nanos: i32) -> String {
    let mut x = format!("{secs}.{:09}", nanos.unsigned_abs());
    for _ in 0..2 {
        if let Some(t) = x.strip_suffix("000") {
            x = t.to_owned();
        }
    }
    x.strip_suffix(".000").map(str::to_owned).unwrap_or(x)
}

fn duration(secs: i64, nanos: i32) -> String {
    let sign = if secs == 0 && nanos < 0 { "-" } else { "" };
    format!("{sign}{}s", fraction(secs, nanos))
}

fn timestamp(secs: i64, nanos: i32) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (d, tm) = (t.date(), t.time());
    let frac = fraction(0, nanos);
    let frac = frac.strip_prefix('0').unwrap_or(&frac);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        tm.hour(),
        tm.minute(),
        tm.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(v: serde_json::Value) -> DynamicMessage {
        let pool = membrane_xds::configdump::pool().unwrap();
        let d = pool
            .get_message_by_name("envoy.admin.v3.ClustersConfigDump")
            .unwrap();
        DynamicMessage::deserialize(d, v).unwrap()
    }

    #[test]
    fn messages_print_as_jsonpb_with_an_indent() {
        let m = cluster(serde_json::json!({"dynamic_active_clusters": [{"cluster": {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "outbound|80||a.default", "alt_stat_name": "a", "type": "EDS",
            "eds_cluster_config": {"eds_config": {"ads": {}}},
            "connect_timeout": "1.500s",
            "max_requests_per_connection": 7,
            "metadata": {"filter_metadata": {"istio": {"b": 1.0, "a": "x<y"}}}
        }}]}));
        // Declaration order (alt_stat_name is field 28, declared second), an empty
        // message on two lines, uint32 wrappers as numbers, a Struct's keys sorted and
        // indented as Go's jsonpb does (two levels in, its brace one level in).
        assert_eq!(
            print(&m, "  "),
            "{\n  \"dynamicActiveClusters\": [\n    {\n      \"cluster\": {\n        \"@type\": \"type.googleapis.com/envoy.config.cluster.v3.Cluster\",\n        \"name\": \"outbound|80||a.default\",\n        \"altStatName\": \"a\",\n        \"type\": \"EDS\",\n        \"edsClusterConfig\": {\n          \"edsConfig\": {\n            \"ads\": {\n\n            }\n          }\n        },\n        \"connectTimeout\": \"1.500s\",\n        \"maxRequestsPerConnection\": 7,\n        \"metadata\": {\n          \"filterMetadata\": {\n            \"istio\": {\n                \"a\": \"x\\u003cy\",\n                \"b\": 1\n              }\n          }\n        }\n      }\n    }\n  ]\n}"
        );
    }

    #[test]
    fn without_an_indent_jsonpb_is_compact() {
        let m = cluster(serde_json::json!({"dynamic_active_clusters": [{"cluster": {
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": "a", "eds_cluster_config": {"eds_config": {"ads": {}}},
            "metadata": {"filter_metadata": {"istio": {"k": [1.5, null]}}}
        }}]}));
        assert_eq!(
            print(&m, ""),
            r#"{"dynamicActiveClusters":[{"cluster":{"@type":"type.googleapis.com/envoy.config.cluster.v3.Cluster","name":"a","edsClusterConfig":{"edsConfig":{"ads":{}}},"metadata":{"filterMetadata":{"istio":{"k":[1.5,null]}}}}}]}"#
        );
    }

    #[test]
    fn times_and_floats_print_as_go_does() {
        assert_eq!(duration(1, 0), "1s");
        assert_eq!(duration(0, 10_000_000), "0.010s");
        assert_eq!(timestamp(0, 5_000_000), "1970-01-01T00:00:00.005Z");
        assert_eq!(go_float(1e-7, "0.0000001".into(), "1e-7".into()), "1e-7");
        assert_eq!(go_float(1e21, "x".into(), "1e21".into()), "1e+21");
        assert_eq!(go_float(0.5, "0.5".into(), "5e-1".into()), "0.5");
    }
}
