//! Fuzz targets for the data decoders: JSON Lines, CSV, Pub/Sub messages and RFC 3339 times.
//!
//! Each target takes arbitrary bytes and panics when its invariant breaks, so the same function
//! serves libFuzzer (`fuzz/`, long runs by hand: docs/fuzzing.md) and `cargo test`
//! (`tests/fuzz_corpus.rs`: the committed corpus in `fuzz/corpus/<target>/` plus a fixed number
//! of inputs from the deterministic [`Mutator`]).
//!
//! Invariants of every decoder target: no panic; every input record is exactly one good row or
//! one error record (good + bad = input records), error records in input order with their
//! payload byte for byte; and no silently changed number (a good row's integer and float fields
//! equal what serde_json reads from the same line). Allocation is bounded by the input: inputs
//! above [`MAX_INPUT`] are ignored, and libFuzzer's `-malloc_limit_mb` catches a decoder that
//! allocates out of proportion.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};

use crate::io::csv::CsvDecoder;
use crate::pubsub::config::{Format, ReadConfig, ReadFrom};
use crate::pubsub::decode::{Incoming, MessageDecoder};
use crate::record::json::{BadRecord, JsonDecoder, count_lines};

/// Inputs longer than this are skipped: the invariants do not depend on size, and long inputs
/// only slow the search.
pub const MAX_INPUT: usize = 64 * 1024;

/// A fuzz target: panics when its invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("json_lines", json_lines),
    ("csv_lines", csv_lines),
    ("pubsub_messages", pubsub_messages),
    ("rfc3339", rfc3339),
];

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("n", DataType::Int64, true),
        Field::new("x", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            true,
        ),
    ]))
}

/// Non-blank lines of `chunk` with their indices (what the decoders count as records).
fn records(chunk: &[u8]) -> Vec<(usize, &[u8])> {
    chunk
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect()
}

/// Good rows + bad records = records; bad records in order, each with its line's bytes.
/// Returns the records that became rows, in order.
fn check_partition<'a>(
    chunk: &'a [u8],
    rows: Option<&RecordBatch>,
    bad: &[BadRecord],
) -> Vec<&'a [u8]> {
    let recs = records(chunk);
    assert_eq!(recs.len(), count_lines(chunk), "count_lines disagrees");
    let n_rows = rows.map_or(0, |r| r.num_rows());
    assert_eq!(
        n_rows + bad.len(),
        recs.len(),
        "good rows + error records must equal input records"
    );
    assert!(
        bad.windows(2).all(|w| w[0].line < w[1].line),
        "error records out of order or repeated"
    );
    let mut bad_lines = bad.iter().peekable();
    let mut good = Vec::with_capacity(n_rows);
    for (index, line) in recs {
        match bad_lines.peek() {
            Some(b) if b.line == index => {
                assert_eq!(b.payload, line.trim_ascii_end(), "payload changed");
                bad_lines.next();
            }
            _ => good.push(line),
        }
    }
    assert!(
        bad_lines.next().is_none(),
        "an error record names no record"
    );
    good
}

/// A good row's numbers equal serde_json's reading of its line (when serde_json reads it).
fn check_numbers(rows: &RecordBatch, row: usize, line: &[u8]) {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(line)
    else {
        return;
    };
    for (field, col) in rows.schema().fields().iter().zip(rows.columns()) {
        let name = field.name();
        let (Some(serde_json::Value::Number(want)), true) =
            (obj.get(name.as_str()), col.is_valid(row))
        else {
            continue;
        };
        match col.data_type() {
            DataType::Int64 => {
                let got = col.as_primitive::<Int64Type>().value(row);
                // `5.0` is the integer 5. serde_json reads such a number as an f64 that may be
                // a ULP or two off (no `float_roundtrip`), so that is all it can confirm.
                let exact = want.as_i64() == Some(got)
                    || want.as_f64().is_some_and(|f| {
                        f == got as f64
                            || (f.to_bits() as i64).abs_diff((got as f64).to_bits() as i64) <= 2
                    });
                assert!(exact, "field {name}: {want} became {got}");
            }
            DataType::Float64 => {
                let got = col.as_primitive::<Float64Type>().value(row);
                assert!(got.is_finite(), "field {name}: {got} is not finite");
                // serde_json (without `float_roundtrip`) may be 1 ULP off the correctly rounded
                // value arrow's parser gives; more than that is a changed number.
                let ulps = want
                    .as_f64()
                    .map(|w| (w.to_bits() as i64).abs_diff(got.to_bits() as i64));
                assert!(
                    ulps.is_some_and(|d| d <= 2) || want.as_f64() == Some(got),
                    "field {name}: {want} became {got}"
                );
            }
            _ => {}
        }
    }
}

/// JSON Lines through [`JsonDecoder`] with integer, float, string and list fields.
pub fn json_lines(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut d = JsonDecoder::new(schema()).expect("the schema decodes");
    let (rows, bad) = d.decode_lines(data);
    let good = check_partition(data, rows.as_ref(), &bad);
    if let Some(rows) = &rows {
        assert_eq!(rows.schema(), schema(), "rows have the user's schema");
        for (row, line) in good.iter().enumerate() {
            check_numbers(rows, row, line);
        }
    }
    // The decoder is usable after any input.
    let (again, bad) = d.decode_lines(b"{\"id\": 1}\n");
    assert_eq!(again.map(|r| r.num_rows()), Some(1));
    assert!(bad.is_empty());
    // A flat schema takes the screen's fast path (`record::screen`): same invariants, and the
    // fast path flags at least what the full scan flags.
    let flat: SchemaRef = Arc::new(Schema::new(schema().fields()[..4].to_vec()));
    let screen = crate::record::screen::Screen::new(&flat).expect("integer fields");
    // On lines of JSON objects only: on anything else the paths may differ, harmlessly,
    // because arrow rejects such a line before any value is parsed.
    let valid = records(data)
        .iter()
        .all(|(_, l)| serde_json::from_slice::<serde_json::Value>(l).is_ok_and(|v| v.is_object()));
    if valid && screen.full_scan(data) {
        assert!(screen.is_risky(data), "the fast path missed a risky value");
    }
    let mut d = JsonDecoder::new(flat.clone()).expect("the schema decodes");
    let (rows, bad) = d.decode_lines(data);
    let good = check_partition(data, rows.as_ref(), &bad);
    if let Some(rows) = &rows {
        for (row, line) in good.iter().enumerate() {
            check_numbers(rows, row, line);
        }
    }
}

/// CSV lines (no header) through [`CsvDecoder`]: integer, string and float columns.
pub fn csv_lines(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Utf8, true),
        Field::new("c", DataType::Float64, true),
    ]));
    let d = CsvDecoder::new(schema.clone());
    let (rows, bad) = d.decode_lines(data);
    check_partition(data, rows.as_ref(), &bad);
    if let Some(rows) = &rows {
        assert_eq!(rows.schema(), schema);
        let c = rows.column(2).as_primitive::<Float64Type>();
        assert!(
            c.iter().flatten().all(f64::is_finite),
            "a float is not finite"
        );
    }
}

/// Pub/Sub messages through [`MessageDecoder`] (JSON payloads, a timestamp attribute). The
/// input is split into messages at 0x1E; in each, the bytes before a 0x1F are the `ts`
/// attribute (when valid UTF-8) and the rest the payload.
pub fn pubsub_messages(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let cfg = ReadConfig {
        from: ReadFrom::Subscription(crate::config::yaml::Located::new(
            "s".into(),
            Default::default(),
        )),
        format: Format::Json,
        schema: Some(serde_json::json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "x": {"type": "number"},
                "s": {"type": "string"}
            }
        })),
        attributes: vec![],
        attributes_map: None,
        id_attribute: None,
        timestamp_attribute: Some("ts".into()),
        timestamp_unit: Default::default(),
        metadata: Default::default(),
        watermark: Default::default(),
        flow_control: Default::default(),
        subscription_settings: Default::default(),
        error_output: None,
    };
    let mut d = MessageDecoder::new(&cfg).expect("the config decodes");
    let msgs: Vec<Incoming> = data
        .split(|b| *b == 0x1e)
        .enumerate()
        .map(|(i, m)| {
            let (ts, payload) = match m.iter().position(|b| *b == 0x1f) {
                Some(p) => (std::str::from_utf8(&m[..p]).ok(), &m[p + 1..]),
                None => (Some("1767225600000"), m),
            };
            Incoming {
                data: bytes::Bytes::copy_from_slice(payload),
                attributes: ts
                    .map(|t| [("ts".to_string(), t.to_string())].into())
                    .unwrap_or_default(),
                message_id: i.to_string(),
                publish_time_ms: Some(0),
                ..Default::default()
            }
        })
        .collect();
    let (rows, bad) = d.decode(&msgs);
    let n_rows = rows.as_ref().map_or(0, |r| r.num_rows());
    assert_eq!(n_rows + bad.len(), msgs.len(), "rows + bad = messages");
    assert!(
        bad.windows(2).all(|w| w[0].0 < w[1].0),
        "bad messages out of order or repeated"
    );
    assert!(bad.iter().all(|(i, _)| *i < msgs.len()));
    if let Some(rows) = &rows {
        let kept: Vec<usize> = (0..msgs.len())
            .filter(|i| !bad.iter().any(|(b, _)| b == i))
            .collect();
        let user = crate::record::Batch::new(rows.clone()).user_rows();
        for (row, &i) in kept.iter().enumerate() {
            check_numbers(&user, row, &msgs[i].data);
        }
    }
}

/// RFC 3339 text: the fast path ([`crate::time::rfc3339::utc_millis`]) agrees with Arrow's cast
/// whenever it answers, and the timestamp-attribute parser does not panic.
pub fn rfc3339(data: &[u8]) {
    use arrow::array::{ArrayRef, StringArray};
    use arrow::compute::cast;
    use arrow::datatypes::TimeUnit;
    if data.len() > 256 {
        return;
    }
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::pubsub::decode::parse_timestamp(s, crate::time::epoch::EpochUnit::Auto);
    let fast = crate::time::rfc3339::utc_millis(s);
    let column: ArrayRef = Arc::new(StringArray::from(vec![Some(s), None]));
    let whole = crate::time::rfc3339::column_millis(&column);
    assert_eq!(
        whole.as_ref().map(|c| c.value(0)),
        fast,
        "column and value paths disagree on {s:?}"
    );
    if let Some(ms) = fast {
        let arrow = cast(
            &column,
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        )
        .ok()
        .and_then(|t| cast(&t, &DataType::Int64).ok())
        .and_then(|i| {
            let i = i.as_primitive::<Int64Type>();
            i.is_valid(0).then(|| i.value(0))
        });
        assert_eq!(arrow, Some(ms), "fast path and Arrow disagree on {s:?}");
    }
}

/// A deterministic mutator (xorshift64*): the same seed gives the same inputs on every machine,
/// so `cargo test` explores a fixed neighbourhood of the corpus without a fuzzing engine.
pub struct Mutator {
    state: u64,
}

/// Tokens that reached defects before (issue #20) or sit on parser boundaries.
pub const DICTIONARY: &[&[u8]] = &[
    b"5.5",
    b"-9223372036854775809",
    b"9223372036854775808",
    b"-9223372036854775808",
    b"1e400",
    b"-1e400",
    b"1e-19",
    b"1e99999",
    b"1E2",
    b"0.0",
    b"99999999999999999999999999999999999999999",
    b"\"",
    b"\\",
    b"\\u0000",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\n",
    b"\r\n",
    b"null",
    b"true",
    b"\"NaN\"",
    b"\"inf\"",
    b"\xff",
    b"\xef\xbb\xbf",
    b"\x1e",
    b"\x1f",
    b"1767225600123",
    b"2026-01-01T00:00:00.123Z",
    b"2026-02-30T00:00:00Z",
    b"+01:00",
    b"9999-12-31T23:59:59.999999999Z",
];

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// One to four random edits of `input`: flip, replace, insert a dictionary token, delete,
    /// duplicate a range, or splice in part of `other`.
    pub fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(6) {
                0 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] ^= 1 << self.below(8);
                }
                1 if !out.is_empty() => {
                    let i = self.below(out.len());
                    out[i] = b"0123456789.eE-+\"{}[],:\n \\"[self.below(25)];
                }
                2 => {
                    let token = DICTIONARY[self.below(DICTIONARY.len())];
                    out.splice(at..at, token.iter().copied());
                }
                3 if !out.is_empty() => {
                    let end = (at + 1 + self.below(8)).min(out.len());
                    out.drain(at.min(end)..end);
                }
                4 if !out.is_empty() => {
                    let start = self.below(out.len());
                    let end = (start + 1 + self.below(16)).min(out.len());
                    let copy = out[start..end].to_vec();
                    out.splice(at..at, copy);
                }
                _ if !other.is_empty() => {
                    let start = self.below(other.len());
                    let end = (start + 1 + self.below(32)).min(other.len());
                    out.splice(at..at, other[start..end].iter().copied());
                }
                _ => out.push(b'\n'),
            }
        }
        out.truncate(MAX_INPUT);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mutator_is_deterministic() {
        let a: Vec<Vec<u8>> = {
            let mut m = Mutator::new(7);
            (0..20).map(|_| m.mutate(b"{\"id\": 1}", b"x")).collect()
        };
        let mut m = Mutator::new(7);
        let b: Vec<Vec<u8>> = (0..20).map(|_| m.mutate(b"{\"id\": 1}", b"x")).collect();
        assert_eq!(a, b);
    }
}
