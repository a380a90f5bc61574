//! The screen in front of arrow-json's integer decoding: which chunks hold, in an integer
//! field, a number arrow would cast from an `f64` (`record::numbers`): one with a fraction, an
//! exponent, or 19 digits or more. Strings in integer fields are parsed exactly by arrow (or
//! fail), so only bare numbers matter.
//!
//! Fast path, for schemas whose integer fields are all top-level and chunks without a backslash
//! (so every key is written as is): one `memmem` per integer field for its `"name"`, and a look
//! at the number after the `:`. Otherwise a byte-by-byte scan that tracks the nesting depth and
//! the current top-level key (a string followed by `:`; arrow's tape decoder does not need the
//! commas between members), strings skipped with `memchr`. Strings are delimited as the tape
//! decoder delimits them (a raw newline does not end one), so the scan sees the tokens the
//! decoder parses; on input the tape decoder rejects, the scan may drift, but then no value of
//! that input is decoded.

use arrow::datatypes::{DataType, SchemaRef};

/// What the value of a top-level key is, for the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An `Int64` field: its value is screened.
    Int,
    /// A struct or list with an `Int64` inside (or a key the screen cannot read, escaped):
    /// every token inside the value is screened.
    Nested,
    /// Anything else, and keys outside the schema (arrow skips them).
    Other,
}

/// Finds numbers arrow-json would cast from an `f64` into the integer fields of a schema.
pub struct Screen {
    /// Top-level fields with an integer inside, by name (a handful: a linear search).
    fields: Vec<(Box<[u8]>, Kind)>,
    /// `"name"` finders of the top-level `Int64` fields, for the fast path.
    keys: Vec<memchr::memmem::Finder<'static>>,
    /// A field is nested (struct or list) with an integer inside: always the full scan.
    nested: bool,
}

fn contains_int(dt: &DataType) -> bool {
    match dt {
        DataType::Int64 => true,
        DataType::Struct(fs) => fs.iter().any(|f| contains_int(f.data_type())),
        DataType::List(item) => contains_int(item.data_type()),
        _ => false,
    }
}

impl Screen {
    /// `None` when `schema` has no integer field (nothing to screen).
    pub fn new(schema: &SchemaRef) -> Option<Self> {
        let fields: Vec<(Box<[u8]>, Kind)> = schema
            .fields()
            .iter()
            .filter(|f| contains_int(f.data_type()))
            .map(|f| {
                let kind = if f.data_type() == &DataType::Int64 {
                    Kind::Int
                } else {
                    Kind::Nested
                };
                (f.name().as_bytes().into(), kind)
            })
            .collect();
        if fields.is_empty() {
            return None;
        }
        let keys = fields
            .iter()
            .filter(|(_, k)| *k == Kind::Int)
            .map(|(name, _)| {
                let quoted = [&b"\""[..], name, b"\""].concat();
                memchr::memmem::Finder::new(&quoted).into_owned()
            })
            .collect();
        let nested = fields.iter().any(|(_, k)| *k == Kind::Nested);
        Some(Screen {
            fields,
            keys,
            nested,
        })
    }

    fn kind_of(&self, key: &[u8]) -> Kind {
        self.fields
            .iter()
            .find(|(name, _)| name.as_ref() == key)
            .map_or(Kind::Other, |(_, k)| *k)
    }

    fn screened(depth: u32, kind: Kind) -> bool {
        match kind {
            Kind::Int => depth == 1,
            Kind::Nested => depth >= 1,
            Kind::Other => false,
        }
    }

    /// Whether `chunk` holds, in an integer field, a number [`risky_token`] flags.
    ///
    /// Fast path, for flat schemas and chunks without a backslash (so every key is written as
    /// is and no string hides a quote): find each integer field's `"name"` with `memmem` and
    /// look at the value after its `:`. A `"name"` that is not a key (inside a nested object)
    /// is looked at too, which can only flag more. Otherwise the full scan.
    pub fn is_risky(&self, chunk: &[u8]) -> bool {
        if self.nested || memchr::memchr(b'\\', chunk).is_some() {
            return self.full_scan(chunk);
        }
        self.keys.iter().any(|finder| {
            finder.find_iter(chunk).any(|at| {
                number_after_key(&chunk[at + finder.needle().len()..]).is_some_and(risky_token)
            })
        })
    }

    /// The byte-by-byte scan: depth, keys and every value of an integer field.
    pub fn full_scan(&self, chunk: &[u8]) -> bool {
        let n = chunk.len();
        let mut i = 0;
        let mut depth: u32 = 0;
        let mut kind = Kind::Other;
        while i < n {
            match chunk[i] {
                b'"' => {
                    let start = i + 1;
                    let mut j = start;
                    let mut escaped = false;
                    while j < n {
                        match memchr::memchr2(b'"', b'\\', &chunk[j..]) {
                            Some(k) if chunk[j + k] == b'\\' => {
                                escaped = true;
                                j += k + 2;
                            }
                            Some(k) => {
                                j += k;
                                break;
                            }
                            None => j = n,
                        }
                    }
                    let end = j.min(n);
                    let raw = &chunk[start..end];
                    // A key is a string followed by `:` (arrow's tape decoder skips commas, so
                    // counting them would not tell keys from values).
                    let is_key = depth == 1
                        && chunk
                            .get(end + 1..)
                            .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()))
                            == Some(&b':');
                    if is_key {
                        kind = if escaped {
                            Kind::Nested
                        } else {
                            self.kind_of(raw)
                        };
                    }
                    i = end + 1;
                }
                b'{' => {
                    depth += 1;
                    if depth == 1 {
                        kind = Kind::Other;
                    }
                    i += 1;
                }
                b'[' => {
                    depth += 1;
                    if depth == 1 {
                        // Not an object: whatever it holds is screened.
                        kind = Kind::Nested;
                    }
                    i += 1;
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    i += 1;
                }
                b'-' | b'+' | b'.' | b'0'..=b'9' => {
                    let start = i;
                    while i < n && is_number_byte(chunk[i]) {
                        i += 1;
                    }
                    if Self::screened(depth, kind) && risky_token(&chunk[start..i]) {
                        return true;
                    }
                }
                _ => i += 1,
            }
        }
        false
    }
}

fn is_number_byte(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

/// Whether arrow-json would cast the number `t` from an `f64` into an integer field: it has a
/// fraction, an exponent, or 19 digits or more (`i64` has 19, and the negative overflow
/// `-9223372036854775809` used to be clamped to `i64::MIN`).
pub fn risky_token(t: &[u8]) -> bool {
    t.iter().any(|&b| matches!(b, b'.' | b'e' | b'E'))
        || t.iter().filter(|b| b.is_ascii_digit()).count() >= 19
}

/// Every number written as the value of key `field` in `line` (at any depth: the top-level one
/// is among them, and duplicate keys, of which arrow keeps the last, are all there); empty for
/// nested paths.
pub fn value_texts<'a>(line: &'a [u8], field: &str) -> Vec<&'a [u8]> {
    if field.contains(['.', '[']) {
        return Vec::new();
    }
    let quoted = [&b"\""[..], field.as_bytes(), b"\""].concat();
    memchr::memmem::find_iter(line, &quoted)
        .filter_map(|at| number_after_key(&line[at + quoted.len()..]))
        .collect()
}

/// The number token after `: ` in `after` (the bytes following a quoted key), if any.
fn number_after_key(after: &[u8]) -> Option<&[u8]> {
    let colon = after.iter().position(|b| !b.is_ascii_whitespace())?;
    if after[colon] != b':' {
        return None;
    }
    let value = &after[colon + 1..];
    let v = value.iter().position(|b| !b.is_ascii_whitespace())?;
    let value = &value[v..];
    if !matches!(value[0], b'-' | b'+' | b'.' | b'0'..=b'9') {
        return None;
    }
    let end = value
        .iter()
        .position(|&b| !is_number_byte(b))
        .unwrap_or(value.len());
    Some(&value[..end])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn screen(nested: bool) -> Screen {
        let mut fields = vec![
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("id", DataType::Utf8, true),
        ];
        if nested {
            fields.push(Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
                true,
            ));
        }
        Screen::new(&Arc::new(Schema::new(fields))).expect("has integer fields")
    }

    #[test]
    fn only_numbers_in_integer_fields_are_flagged() {
        for s in [screen(false), screen(true)] {
            assert!(!s.is_risky(br#"{"n": 1, "x": 2.5e-7, "id": "1.5"}"#));
            assert!(!s.is_risky(br#"{"id": "1e5", "other": 1e99999, "n": "5.5"}"#));
            assert!(s.is_risky(br#"{"id": "a", "n": 5.5}"#));
            assert!(s.is_risky(br#"{"n": 1e2}"#));
            assert!(s.is_risky(br#"{"n" :-9223372036854775809}"#));
            assert!(s.is_risky(br#"{"n": 1000000000000000000}"#), "19 digits");
            assert!(!s.is_risky(br#"{"n": 100000000000000000}"#), "18 digits");
            assert!(
                s.is_risky(br#"{"\u006e": 5.5}"#),
                "an escaped key may be `n`"
            );
            // arrow's tape decoder does not need the comma between members.
            assert!(s.is_risky(br#"{"m": "x" "n": 5.5}"#));
            // The key of the second line is read afresh.
            assert!(s.is_risky(b"{\"id\": \"x\"}\n{\"n\": 1.5}\n"));
            assert!(!s.is_risky(b"{\"n\": 1}\n{\"id\": \"x\", \"x\": 1.5}\n"));
        }
        assert!(screen(true).is_risky(br#"{"tags": [1, 2.5]}"#));
        assert_eq!(
            value_texts(br#"{"id": "n", "n" : -9223372036854775809, "n": 2}"#, "n"),
            vec![&b"-9223372036854775809"[..], b"2"]
        );
        assert!(value_texts(br#"{"n": 1}"#, "tags[]").is_empty());
    }

    /// Both paths give the same answers on a flat schema and valid JSON.
    #[test]
    fn the_fast_path_agrees_with_the_full_scan() {
        let flat = screen(false);
        for line in [
            &br#"{"n": 1, "id": "e0000000001"}"#[..],
            br#"{"id": "1e5", "n" : 5.5}"#,
            br#"{"n":1e5}"#,
            br#"{"n": null, "id": "-."}"#,
            br#"{"x": 1.5, "n": [1.5]}"#,
        ] {
            assert_eq!(
                flat.is_risky(line),
                flat.full_scan(line),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
