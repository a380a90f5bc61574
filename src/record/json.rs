//! JSON Lines ↔ Arrow with per-line error isolation.
//!
//! The fast path hands a whole chunk of lines to arrow-json's tape decoder (vectorised, no
//! per-row allocation). Only when that fails is the chunk decoded line by line, to find exactly
//! which lines are bad; those go to the error output with their payload and the good lines are
//! decoded together as usual. So a mostly-clean stream pays nothing for error handling.
//!
//! Numbers must fit their field exactly (`record::numbers`): a chunk with a number arrow would
//! cast into an integer field (`record::screen`), a non-finite float, or not one row per
//! non-blank line goes to line-by-line isolation too.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::json::reader::{Decoder, ReaderBuilder, infer_json_schema_from_iterator};

use super::numbers;
use super::screen::Screen;

/// A record that could not be decoded: where it was, its original bytes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// Index of the line in the decoded chunk (0-based, counting every `\n`-separated line,
    /// blank ones included), so callers map failures to their records exactly, whatever the
    /// bytes (comparing text would not: invalid UTF-8 reads back as U+FFFD).
    pub line: usize,
    /// The line as it was, trailing whitespace removed (not necessarily UTF-8).
    pub payload: Vec<u8>,
    pub error: String,
}

impl BadRecord {
    /// The payload as an error record's `element` (text, or base64 when it is not UTF-8).
    pub fn element(&self) -> crate::pipeline::operator::Element {
        crate::pipeline::operator::Element::from_bytes(&self.payload)
    }
}

/// Rows the decoder buffers before it must be flushed; chunks larger than this are decoded in
/// several flushes and concatenated. (arrow-json preallocates its tape from this number.)
const DECODER_ROWS: usize = 8192;

/// Decodes newline-delimited JSON objects into batches of a fixed schema.
pub struct JsonDecoder {
    schema: SchemaRef,
    /// `schema` has float fields, checked to be finite after decoding.
    floats: bool,
    /// Set when `schema` has integer fields: finds numbers arrow would cast into them.
    screen: Option<Screen>,
    decoder: Decoder,
}

impl JsonDecoder {
    /// # Errors
    /// When arrow-json cannot decode into `schema` (an unsupported type).
    pub fn new(schema: SchemaRef) -> Result<Self, ArrowError> {
        let decoder = Self::build(&schema)?;
        Ok(JsonDecoder {
            floats: numbers::has_float_fields(&schema),
            screen: Screen::new(&schema),
            schema,
            decoder,
        })
    }

    fn build(schema: &SchemaRef) -> Result<Decoder, ArrowError> {
        ReaderBuilder::new(schema.clone())
            .with_batch_size(DECODER_ROWS)
            .with_coerce_primitive(false)
            .build_decoder()
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `chunk`, a run of complete lines. Blank lines are skipped.
    ///
    /// Guarantee: every non-blank line is either one row of the batch (in order) or one
    /// [`BadRecord`]; a number that does not fit its field is a bad record, never a changed value.
    pub fn decode_lines(&mut self, chunk: &[u8]) -> (Option<RecordBatch>, Vec<BadRecord>) {
        if self.screen.as_ref().is_some_and(|s| s.is_risky(chunk)) {
            return self.decode_isolating(chunk);
        }
        match self.try_decode(chunk) {
            Ok(batch) => (batch, Vec::new()),
            // An error, or not one row per line (two values on a line, one value over two).
            Err(_) => self.decode_isolating(chunk),
        }
    }

    /// Decodes `chunk` and checks its numbers; the batch has the user's schema.
    fn try_decode(&mut self, chunk: &[u8]) -> Result<Option<RecordBatch>, ArrowError> {
        let Some(batch) = self.try_decode_raw(chunk)? else {
            return Ok(None);
        };
        if self.floats {
            numbers::check_floats(&batch).map_err(|e| ArrowError::JsonError(e.to_string()))?;
        }
        Ok(Some(batch))
    }

    /// Feeds the tape decoder one line at a time (the tape is shared, so this is the same
    /// vectorised decode) and requires each non-blank line to add exactly one complete row: two
    /// values on a line, or a value over two lines, fail the chunk. Counting rows against lines
    /// afterwards would not do: the two can cancel out.
    fn try_decode_raw(&mut self, chunk: &[u8]) -> Result<Option<RecordBatch>, ArrowError> {
        let mut parts = Vec::new();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', chunk).chain(std::iter::once(chunk.len())) {
            let line = &chunk[start..end.min(chunk.len())];
            start = end + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let before = self.decoder.len();
            let read = self.decoder.decode(line)?;
            if self.decoder.len() != before + 1
                || (read < line.len() && !line[read..].iter().all(u8::is_ascii_whitespace))
                || self.decoder.has_partial_record()
            {
                return Err(ArrowError::JsonError(
                    "not exactly one JSON value on the line".into(),
                ));
            }
            if self.decoder.len() >= DECODER_ROWS - 1 {
                // Room for the next line's row (and for noticing a second one).
                parts.extend(self.decoder.flush()?);
            }
        }
        parts.extend(self.decoder.flush()?);
        match parts.len() {
            0 => Ok(None),
            1 => Ok(parts.pop()),
            _ => arrow::compute::concat_batches(&self.schema, &parts).map(Some),
        }
    }

    fn decode_isolating(&mut self, chunk: &[u8]) -> (Option<RecordBatch>, Vec<BadRecord>) {
        // The shared decoder may hold a partial tape after the failure: start afresh.
        self.decoder = Self::build(&self.schema).expect("schema was accepted before");
        let mut good = Vec::with_capacity(chunk.len());
        let mut good_lines = Vec::new();
        let mut bad = Vec::new();
        for (index, line) in chunk.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match self.check_line(line) {
                Ok(()) => {
                    good.extend_from_slice(line);
                    good.push(b'\n');
                    good_lines.push((index, line));
                }
                Err(e) => bad.push(BadRecord {
                    line: index,
                    payload: trim_end(line).to_vec(),
                    error: e,
                }),
            }
        }
        let batch = match self.try_decode(&good) {
            Ok(b) => b,
            Err(e) => {
                // Each line decoded alone; failing together would be an arrow-json bug. Keep the
                // data rather than lose it: report every line of the chunk as bad.
                bad.extend(good_lines.into_iter().map(|(index, l)| BadRecord {
                    line: index,
                    payload: trim_end(l).to_vec(),
                    error: e.to_string(),
                }));
                bad.sort_by_key(|b| b.line);
                self.decoder = Self::build(&self.schema).expect("schema was accepted before");
                None
            }
        };
        (batch, bad)
    }

    fn check_line(&self, line: &[u8]) -> Result<(), String> {
        if std::str::from_utf8(line).is_err() {
            return Err("invalid UTF-8".into());
        }
        if self.screen.as_ref().is_some_and(|s| s.is_risky(line)) {
            // Before arrow casts the number (see `record::numbers`).
            numbers::check_exact(line, &self.schema)?;
        }
        let batch = Self::decode_one(&self.schema, line)?;
        if self.floats {
            numbers::check_floats(&batch).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Decodes a line that must hold exactly one JSON object.
    fn decode_one(schema: &SchemaRef, line: &[u8]) -> Result<RecordBatch, String> {
        let mut one = Self::build(schema).map_err(|e| e.to_string())?;
        let read = one.decode(line).map_err(clean)?;
        if read < line.len() && !line[read..].iter().all(u8::is_ascii_whitespace) {
            return Err("more than one JSON value on the line".into());
        }
        if one.has_partial_record() {
            return Err("truncated JSON record".into());
        }
        match one.flush().map_err(clean)? {
            Some(b) if b.num_rows() == 1 => Ok(b),
            _ => Err("expected one JSON object".into()),
        }
    }
}

/// Lines of `chunk` holding anything but whitespace. Almost every line starts with a
/// non-blank byte, so this costs one `memchr` pass.
pub fn count_lines(chunk: &[u8]) -> usize {
    let mut n = 0;
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', chunk).chain(std::iter::once(chunk.len())) {
        if chunk[start..end].iter().any(|b| !b.is_ascii_whitespace()) {
            n += 1;
        }
        start = end + 1;
    }
    n
}

fn trim_end(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &b[..end]
}

fn clean(e: ArrowError) -> String {
    match e {
        ArrowError::JsonError(m) => m,
        other => other.to_string(),
    }
}

/// Infers a schema from sample lines, skipping lines that are not JSON objects.
///
/// Each field takes the type most sample rows agree on (integers and floats together count as
/// numbers), so one stray line like `"watch_seconds": "a lot"` becomes an error record instead
/// of turning the whole column into strings and failing every good line.
///
/// # Errors
/// When the sample values have irreconcilable nested types.
pub fn infer_schema<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
    limit: usize,
) -> Result<SchemaRef, ArrowError> {
    let mut values: Vec<serde_json::Value> = lines
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter(|v| v.is_object())
        .take(limit)
        .collect();
    let winners = majority_kinds(&values);
    for v in &mut values {
        if let serde_json::Value::Object(map) = v {
            map.retain(|k, val| kind(val).is_none_or(|kd| winners.get(k) == Some(&kd)));
        }
    }
    infer_from_values(&values)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Bool,
    Number,
    String,
    List,
    Object,
}

fn kind(v: &serde_json::Value) -> Option<Kind> {
    use serde_json::Value;
    match v {
        Value::Null => None,
        Value::Bool(_) => Some(Kind::Bool),
        Value::Number(_) => Some(Kind::Number),
        Value::String(_) => Some(Kind::String),
        Value::Array(_) => Some(Kind::List),
        Value::Object(_) => Some(Kind::Object),
    }
}

fn majority_kinds(values: &[serde_json::Value]) -> std::collections::HashMap<String, Kind> {
    use std::collections::HashMap;
    let mut votes: HashMap<&str, HashMap<Kind, usize>> = HashMap::new();
    for v in values {
        if let serde_json::Value::Object(map) = v {
            for (k, val) in map {
                if let Some(kd) = kind(val) {
                    *votes.entry(k.as_str()).or_default().entry(kd).or_default() += 1;
                }
            }
        }
    }
    votes
        .into_iter()
        .filter_map(|(field, counts)| {
            // Most votes wins; ties go to the first kind in a fixed order, for determinism.
            let best = counts
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
            Some((field.to_string(), best.0))
        })
        .collect()
}

/// Infers a schema from JSON objects.
///
/// # Errors
/// When the values have irreconcilable types.
pub fn infer_from_values(values: &[serde_json::Value]) -> Result<SchemaRef, ArrowError> {
    let schema = infer_json_schema_from_iterator(values.iter().map(Ok))?;
    Ok(Arc::new(schema))
}

/// Builds a batch from JSON objects (`Create`, test inputs), inferring the schema unless given.
///
/// # Errors
/// When the values do not fit the schema.
pub fn batch_from_values(
    values: &[serde_json::Value],
    schema: Option<SchemaRef>,
) -> Result<RecordBatch, ArrowError> {
    let schema = match schema {
        Some(s) => s,
        None => infer_from_values(values)?,
    };
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_batch_size(values.len().max(1))
        .build_decoder()?;
    decoder.serialize(values)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// An empty schema (a source that saw no data).
pub fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn clean_chunk_decodes_in_one_batch() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let (batch, bad) = d.decode_lines(b"{\"id\":1,\"name\":\"a\"}\n{\"id\":2}\n");
        let batch = batch.unwrap();
        assert!(bad.is_empty());
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(1).null_count(), 1);
    }

    #[test]
    fn chunks_larger_than_the_decoder_lose_nothing() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let n = DECODER_ROWS * 2 + 17;
        let text: String = (0..n).map(|i| format!("{{\"id\":{i}}}\n")).collect();
        let (batch, bad) = d.decode_lines(text.as_bytes());
        assert!(bad.is_empty());
        let batch = batch.unwrap();
        assert_eq!(batch.num_rows(), n);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.value(n - 1), (n - 1) as i64);
    }

    #[test]
    fn inference_follows_the_majority_so_a_stray_line_is_the_only_error() {
        let text = b"{\"n\": 1, \"s\": \"a\"}\n{\"n\": \"lots\", \"s\": \"b\"}\n{\"n\": 2.5}\n{\"n\": 3}\n";
        let schema = infer_schema(text.split(|b| *b == b'\n'), 100).unwrap();
        assert_eq!(
            schema.field_with_name("n").unwrap().data_type(),
            &DataType::Float64
        );
        assert_eq!(
            schema.field_with_name("s").unwrap().data_type(),
            &DataType::Utf8
        );
        let mut d = JsonDecoder::new(schema).unwrap();
        let (batch, bad) = d.decode_lines(text);
        assert_eq!(batch.unwrap().num_rows(), 3);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].payload, b"{\"n\": \"lots\", \"s\": \"b\"}");
        assert_eq!(bad[0].line, 1);
    }

    #[test]
    fn bad_lines_are_isolated_and_good_lines_kept() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let input = b"{\"id\":1}\n{not json\n{\"id\":\"x\"}\n\n{\"name\":\"no id\"}\n{\"id\":5}\n";
        let (batch, bad) = d.decode_lines(input);
        let batch = batch.unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1, 5]);
        let payloads: Vec<&[u8]> = bad.iter().map(|b| b.payload.as_slice()).collect();
        assert_eq!(
            payloads,
            vec![
                &b"{not json"[..],
                b"{\"id\":\"x\"}",
                b"{\"name\":\"no id\"}"
            ]
        );
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![1, 2, 4], "blank lines count");
        // The decoder is usable again afterwards.
        let (again, bad) = d.decode_lines(b"{\"id\":7}\n");
        assert!(bad.is_empty());
        assert_eq!(again.unwrap().num_rows(), 1);
    }

    /// Lines and rows that cancel out: one line with two values, one value over two lines.
    /// Every case must give each non-blank line either its own row or an error record.
    #[test]
    fn two_values_on_a_line_and_a_value_over_two_lines_do_not_cancel_out() {
        let cases: [&[u8]; 6] = [
            // Each line is decoded on its own, so neither can hide the other:
            b"{\"id\":1}{\"id\":2}\n{\"id\":\n3}\n{\"id\":4}\n",
            // a continuation starting with `{`, in an object and in a list (arrow-json reads
            // commas as whitespace: decoding the chunk whole would take the list as one value).
            b"{\"id\":1}{\"id\":2}\n{\"id\":3,\"o\":{\"x\":1}\n{\"y\":2}}\n{\"id\":4}\n",
            b"{\"id\":1}{\"id\":2}\n{\"id\":3,\"l\":[{\"x\":1}\n{\"x\":2}]}\n{\"id\":4}\n",
            // A string over two lines (odd quotes on each), and an escaped quote.
            b"{\"id\":1}{\"id\":2}\n{\"id\":3,\"name\":\"a}\n{b\"}\n{\"id\":4}\n",
            b"{\"id\":1}{\"id\":2}\n{\"id\":3,\"name\":\"a\\\"}\n{\"}\n{\"id\":4}\n",
            // Brackets balanced by count, but closing first.
            b"{\"id\":1}{\"id\":2}\n]}{\"id\":3,\"l\":[{\"x\":1}\n{\"x\":2}]}[{\n{\"id\":4}\n",
        ];
        for input in cases {
            let mut d = JsonDecoder::new(schema()).unwrap();
            let (batch, bad) = d.decode_lines(input);
            let text = String::from_utf8_lossy(input);
            let ids = batch.map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            });
            assert_eq!(ids, Some(vec![4]), "{text}");
            let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
            assert_eq!(lines, vec![0, 1, 2], "{text}");
        }
    }

    /// The cost of the number checks on the standard workload's rows (docs/performance.md,
    /// "Exact numbers"): the plain arrow-json decode (the fast path before issue #20) against
    /// `decode_lines`. Prints times only; run by hand with
    /// `cargo test --release --lib decode_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn decode_cost() {
        let text: String = (0..200_000)
            .map(|i| {
                format!(
                    "{{\"event_id\":\"e{i:08}\",\"recipe_id\":\"r{}\",\"user_id\":\"u{}\",\"action\":\"view\",\"watch_seconds\":{},\"event_time\":\"2026-01-01T00:{:02}:{:02}.123Z\"}}\n",
                    i % 500,
                    i % 20_000,
                    i % 600,
                    (i / 60) % 60,
                    i % 60
                )
            })
            .collect();
        let schema = infer_schema(text.as_bytes().split(|b| *b == b'\n'), 1000).unwrap();
        let chunks: Vec<&[u8]> = {
            let mut out = Vec::new();
            let mut rest = text.as_bytes();
            while !rest.is_empty() {
                let end = memchr::memchr_iter(b'\n', rest)
                    .nth(8191)
                    .map_or(rest.len(), |i| i + 1);
                out.push(&rest[..end]);
                rest = &rest[end..];
            }
            out
        };
        let time = |f: &mut dyn FnMut()| {
            (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed()
                })
                .min()
                .unwrap()
        };
        let mut plain = JsonDecoder::build(&schema).unwrap();
        let before = time(&mut || {
            for c in &chunks {
                plain.decode(c).unwrap();
                plain.flush().unwrap();
            }
        });
        let mut d = JsonDecoder::new(schema.clone()).unwrap();
        let after = time(&mut || {
            for c in &chunks {
                let (b, bad) = d.decode_lines(c);
                assert!(b.is_some() && bad.is_empty());
            }
        });
        let screen = Screen::new(&schema).expect("watch_seconds is an integer");
        let scan = time(&mut || {
            for c in &chunks {
                assert!(!screen.is_risky(c));
            }
        });
        println!(
            "200,000 rows: plain arrow-json {before:?}, decode_lines {after:?} ({:+.1} %), of which the risky-number scan {scan:?}",
            (after.as_secs_f64() / before.as_secs_f64() - 1.0) * 100.0
        );
    }

    #[test]
    fn invalid_utf8_lines_are_reported_by_index_with_their_bytes() {
        let mut d = JsonDecoder::new(schema()).unwrap();
        let input = b"{\"id\":1}\n{\"id\":2,\"name\":\"bad\xff\"}\n{\"id\":3}\n{\"id\":4,\"name\":\"\xfe\"}  \n";
        let (batch, bad) = d.decode_lines(input);
        let ids = batch.unwrap();
        let ids = ids.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 3]);
        let got: Vec<(usize, &[u8], &str)> = bad
            .iter()
            .map(|b| (b.line, b.payload.as_slice(), b.error.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, &b"{\"id\":2,\"name\":\"bad\xff\"}"[..], "invalid UTF-8"),
                (3, &b"{\"id\":4,\"name\":\"\xfe\"}"[..], "invalid UTF-8"),
            ]
        );
    }
}
