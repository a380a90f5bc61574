//! Error records (dead letters): their columns, how an `element` that is not UTF-8 text is
//! kept (base64, marked in `element_encoding`), and how a record too large for a sink is cut
//! down to its limit with the original's size and hash, instead of being retried forever.
//!
//! The cut is a pure function on the record's JSON object, so its arithmetic (JSON escaping can
//! make a payload up to six times larger) is unit-tested without a sink.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::Digest as _;

/// The original payload or row.
pub const ELEMENT: &str = "element";
/// Why it failed.
pub const MSG: &str = "msg";
/// The transform that failed it.
pub const TRANSFORM: &str = "transform";
/// Null when `element` is the payload as text; [`BASE64`] when the payload was not UTF-8 and
/// `element` holds its bytes in standard base64 (with padding).
pub const ELEMENT_ENCODING: &str = "element_encoding";
/// The value of [`ELEMENT_ENCODING`] for base64-encoded bytes.
pub const BASE64: &str = "base64";

/// Attributes (Pub/Sub) of a record that was cut down: `"true"`, the size in bytes of the
/// original element (of its bytes, decoded when base64), and their SHA-256 in lowercase hex.
pub const TRUNCATED_ATTRIBUTE: &str = "sluice_truncated";
pub const ORIGINAL_BYTES_ATTRIBUTE: &str = "sluice_original_bytes";
pub const SHA256_ATTRIBUTE: &str = "sluice_sha256";

/// The schema of error records.
pub fn schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(ELEMENT, DataType::Utf8, false),
                Field::new(MSG, DataType::Utf8, false),
                Field::new(TRANSFORM, DataType::Utf8, false),
                Field::new(ELEMENT_ENCODING, DataType::Utf8, true),
            ]))
        })
        .clone()
}

/// Whether rows with these user columns are error records (a dead-letter output).
pub fn is_error_schema(schema: &Schema) -> bool {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    [ELEMENT, MSG, TRANSFORM].iter().all(|n| names.contains(n))
        && names
            .iter()
            .all(|n| [ELEMENT, MSG, TRANSFORM, ELEMENT_ENCODING].contains(n))
}

/// The `element` of an error record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// Text (a row as JSON, or a payload that is UTF-8).
    Text(String),
    /// A payload that is not UTF-8: kept byte for byte, written as base64.
    Bytes(Vec<u8>),
}

impl Element {
    /// Text when `bytes` are UTF-8, else the bytes themselves.
    pub fn from_bytes(bytes: &[u8]) -> Element {
        match std::str::from_utf8(bytes) {
            Ok(s) => Element::Text(s.to_string()),
            Err(_) => Element::Bytes(bytes.to_vec()),
        }
    }

    /// The `element` and `element_encoding` column values.
    pub fn into_columns(self) -> (String, Option<&'static str>) {
        match self {
            Element::Text(s) => (s, None),
            Element::Bytes(b) => (
                base64::engine::general_purpose::STANDARD.encode(b),
                Some(BASE64),
            ),
        }
    }

    /// At most `max` characters of the element for a log line (lossy for bytes), marked when cut.
    pub fn preview(&self, max: usize) -> String {
        let text = match self {
            Element::Text(s) => std::borrow::Cow::Borrowed(s.as_str()),
            Element::Bytes(b) => String::from_utf8_lossy(b),
        };
        match text.char_indices().nth(max) {
            Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
            None => text.into_owned(),
        }
    }
}

impl From<String> for Element {
    fn from(s: String) -> Self {
        Element::Text(s)
    }
}

/// An error record cut down to a size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated {
    /// The record as compact JSON, at most the limit in bytes.
    pub payload: Vec<u8>,
    /// Size of the original element's bytes (decoded when base64).
    pub original_bytes: usize,
    /// SHA-256 of those bytes, lowercase hex.
    pub sha256: String,
}

impl Truncated {
    /// The marker attributes ([`TRUNCATED_ATTRIBUTE`] and the others).
    pub fn attributes(&self) -> [(String, String); 3] {
        [
            (TRUNCATED_ATTRIBUTE.into(), "true".into()),
            (
                ORIGINAL_BYTES_ATTRIBUTE.into(),
                self.original_bytes.to_string(),
            ),
            (SHA256_ATTRIBUTE.into(), self.sha256.clone()),
        ]
    }
}

/// Cuts the string fields of `record` (`element` first, then `msg`) so that the record as
/// compact JSON is at most `limit` bytes. Base64 elements are cut at a multiple of 4 characters,
/// so what is left still decodes (to a prefix of the original bytes).
///
/// # Errors
/// When even empty strings do not fit (the other fields alone exceed `limit`).
pub fn truncate(record: &Map<String, Value>, limit: usize) -> Result<Truncated, String> {
    let element = record.get(ELEMENT).and_then(Value::as_str).unwrap_or("");
    let base64 = record.get(ELEMENT_ENCODING).and_then(Value::as_str) == Some(BASE64);
    let decoded: Option<Vec<u8>> = base64
        .then(|| {
            base64::engine::general_purpose::STANDARD
                .decode(element)
                .ok()
        })
        .flatten();
    let original: &[u8] = decoded.as_deref().unwrap_or(element.as_bytes());
    let sha256: String = sha2::Sha256::digest(original)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let original_bytes = original.len();
    let mut out = record.clone();
    for field in [ELEMENT, MSG] {
        let size = json_len(&out);
        if size <= limit {
            break;
        }
        let Some(Value::String(s)) = out.get(field) else {
            continue;
        };
        let text_len = escaped_len(s) + 2;
        // What the field may take, quotes included, once the rest of the record is counted.
        let room = limit.saturating_sub(size - text_len).saturating_sub(2);
        let mut cut = prefix_within(s, room);
        if field == ELEMENT && base64 {
            cut -= cut % 4;
        }
        let kept = s[..cut].to_string();
        out.insert(field.to_string(), Value::String(kept));
    }
    let payload = serde_json::to_vec(&out).map_err(|e| e.to_string())?;
    if payload.len() > limit {
        return Err(format!(
            "the error record is {} bytes even with its element and message cut; the limit is {limit}",
            payload.len()
        ));
    }
    Ok(Truncated {
        payload,
        original_bytes,
        sha256,
    })
}

fn json_len(record: &Map<String, Value>) -> usize {
    serde_json::to_vec(record).map_or(usize::MAX, |v| v.len())
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn escaped_len(s: &str) -> usize {
    s.chars().map(char_len).sum()
}

/// The longest prefix of `s` (a byte index on a char boundary) whose escaped form fits `room`.
fn prefix_within(s: &str, room: usize) -> usize {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += char_len(c);
        if used > room {
            return i;
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(element: &str, encoding: Option<&str>) -> Map<String, Value> {
        let Value::Object(m) = json!({
            "element": element, "msg": "expected one JSON object",
            "transform": "Read", "element_encoding": encoding,
        }) else {
            unreachable!()
        };
        m
    }

    #[test]
    fn escaped_text_is_cut_to_the_limit_and_hashed_whole() {
        // 2,000,000 control bytes: 12,000,000 bytes once escaped as \u0001.
        let element = "\u{1}".repeat(2_000_000);
        let t = truncate(&record(&element, None), 1_000_000).unwrap();
        assert!(t.payload.len() <= 1_000_000, "{}", t.payload.len());
        assert!(t.payload.len() > 1_000_000 - 6, "{}", t.payload.len());
        assert_eq!(t.original_bytes, 2_000_000);
        let expected: String = sha2::Sha256::digest(element.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(t.sha256, expected);
        let back: Map<String, Value> = serde_json::from_slice(&t.payload).unwrap();
        let kept = back["element"].as_str().unwrap();
        assert!(element.starts_with(kept));
        assert_eq!(back["msg"], "expected one JSON object");
        assert_eq!(back["transform"], "Read");
    }

    #[test]
    fn base64_is_cut_to_whole_quads_and_hashed_as_bytes() {
        let bytes: Vec<u8> = (0..3000u32).map(|i| (i % 256) as u8).collect();
        let (element, enc) = Element::Bytes(bytes.clone()).into_columns();
        assert_eq!(enc, Some(BASE64));
        let r = record(&element, enc);
        let t = truncate(&r, 1003).unwrap();
        assert!(t.payload.len() <= 1003);
        assert_eq!(t.original_bytes, 3000);
        let back: Map<String, Value> = serde_json::from_slice(&t.payload).unwrap();
        let kept = back["element"].as_str().unwrap();
        assert_eq!(kept.len() % 4, 0);
        let prefix = base64::engine::general_purpose::STANDARD
            .decode(kept)
            .unwrap();
        assert_eq!(prefix[..], bytes[..prefix.len()]);
        assert_eq!(back["element_encoding"], "base64");
    }

    #[test]
    fn multibyte_text_is_cut_on_a_char_boundary_and_small_records_are_kept() {
        let element = "é\"".repeat(100);
        let r = record(&element, None);
        let whole = serde_json::to_vec(&r).unwrap();
        let t = truncate(&r, whole.len()).unwrap();
        assert_eq!(t.payload, whole, "a record within the limit is not cut");
        let t = truncate(&r, whole.len() - 1).unwrap();
        let back: Map<String, Value> = serde_json::from_slice(&t.payload).unwrap();
        assert_eq!(back["element"].as_str().unwrap(), "é\"".repeat(99) + "é");
        assert!(
            truncate(&r, 10).is_err(),
            "the other fields alone exceed 10 bytes"
        );
    }

    #[test]
    fn elements_from_bytes_round_trip() {
        assert_eq!(
            Element::from_bytes(b"ok").into_columns(),
            ("ok".into(), None)
        );
        let (text, enc) = Element::from_bytes(b"bad\xff").into_columns();
        assert_eq!((text.as_str(), enc), ("YmFk/w==", Some(BASE64)));
        assert_eq!(Element::from_bytes(b"bad\xff").preview(2), "ba… (6 bytes)");
    }
}
