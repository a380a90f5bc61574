//! Pub/Sub messages → Arrow rows: payload (JSON through [`JsonDecoder`], or RAW bytes),
//! attribute columns, metadata columns, event time (`__sluice_ts`) and row id (`__sluice_id`).
//!
//! JSON payloads of a batch are decoded together (one compact line per message) and only a
//! failing batch is decoded line by line; every message that cannot become a row is returned
//! with its index and the reason, for the error output.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int64Array, MapBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::config::{Format, ReadConfig};
use crate::record::json::JsonDecoder;
use crate::record::meta;

/// What decoding needs from a message (the client's `Message` plus the delivery attempt).
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub data: bytes::Bytes,
    pub attributes: HashMap<String, String>,
    pub message_id: String,
    /// Milliseconds since the epoch.
    pub publish_time_ms: Option<i64>,
    pub ordering_key: String,
    pub delivery_attempt: Option<i32>,
}

impl Incoming {
    pub fn from_message(
        m: google_cloud_pubsub::model::Message,
        delivery_attempt: Option<i32>,
    ) -> Self {
        let publish_time_ms = m
            .publish_time
            .map(|t| t.seconds() * 1000 + i64::from(t.nanos()) / 1_000_000);
        Incoming {
            data: m.data,
            attributes: m.attributes,
            message_id: m.message_id,
            publish_time_ms,
            ordering_key: m.ordering_key,
            delivery_attempt,
        }
    }

    /// The payload as an error record's `element`: its text, or its bytes (written base64)
    /// when it is not UTF-8.
    pub fn element(&self) -> crate::record::error_record::Element {
        crate::record::error_record::Element::from_bytes(&self.data)
    }
}

/// Turns batches of messages into rows of one schema.
pub struct MessageDecoder {
    cfg: ReadConfig,
    json: Option<JsonDecoder>,
    schema: SchemaRef,
    /// Counts and logs event times far from now (`time::epoch`); the source calls it.
    pub range: crate::time::epoch::RangeGuard,
}

impl MessageDecoder {
    /// # Errors
    /// An invalid or undecodable `schema`.
    pub fn new(cfg: &ReadConfig) -> Result<Self, String> {
        let (json, payload_fields) = match cfg.format {
            Format::Json => {
                let s = cfg
                    .schema
                    .as_ref()
                    .ok_or("`format: JSON` needs a `schema`")?;
                let schema = crate::record::schema::from_json_schema(s)?;
                let fields: Vec<Field> = schema.fields().iter().map(|f| (**f).clone()).collect();
                (
                    Some(JsonDecoder::new(schema).map_err(|e| e.to_string())?),
                    fields,
                )
            }
            Format::Raw => (None, vec![Field::new("payload", DataType::Binary, false)]),
        };
        let mut fields = payload_fields;
        for a in &cfg.attributes {
            fields.push(Field::new(a, DataType::Utf8, true));
        }
        if let Some(m) = &cfg.attributes_map {
            fields.push(Field::new(m, map_type(), false));
        }
        let md = &cfg.metadata;
        if let Some(c) = &md.message_id {
            fields.push(Field::new(c, DataType::Utf8, false));
        }
        if let Some(c) = &md.publish_time {
            fields.push(Field::new(
                c,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ));
        }
        if let Some(c) = &md.ordering_key {
            fields.push(Field::new(c, DataType::Utf8, false));
        }
        if let Some(c) = &md.delivery_attempt {
            fields.push(Field::new(c, DataType::Int64, true));
        }
        fields.push(Field::new(meta::EVENT_TIME, DataType::Int64, false));
        fields.push(Field::new(meta::ROW_ID, DataType::Utf8, false));
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            if !seen.insert(f.name().clone()) {
                return Err(format!(
                    "column `{}` would be produced twice (payload, attributes and metadata columns must have distinct names)",
                    f.name()
                ));
            }
        }
        Ok(MessageDecoder {
            cfg: cfg.clone(),
            json,
            schema: Arc::new(Schema::new(fields)),
            range: Default::default(),
        })
    }

    /// The schema of the rows [`MessageDecoder::decode`] produces (hidden columns included).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `msgs`: the rows of the good ones (in order) and `(index, reason)` of the others.
    pub fn decode(&mut self, msgs: &[Incoming]) -> (Option<RecordBatch>, Vec<(usize, String)>) {
        let mut bad: Vec<(usize, String)> = Vec::new();
        let mut times = Vec::with_capacity(msgs.len());
        let mut candidates = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            match self.event_time(m) {
                Ok(t) => {
                    times.push(t);
                    candidates.push(i);
                }
                Err(e) => bad.push((i, e)),
            }
        }
        let (payload, kept, times): (Vec<ArrayRef>, Vec<usize>, Vec<i64>) = match &mut self.json {
            None => {
                let data: BinaryArray = candidates
                    .iter()
                    .map(|&i| Some(&msgs[i].data[..]))
                    .collect();
                (vec![Arc::new(data)], candidates, times)
            }
            Some(decoder) => {
                let (rows, kept, times) = decode_json(decoder, msgs, &candidates, times, &mut bad);
                match rows {
                    Some(r) => (r.columns().to_vec(), kept, times),
                    None => {
                        bad.sort_by_key(|(i, _)| *i);
                        return (None, bad);
                    }
                }
            }
        };
        bad.sort_by_key(|(i, _)| *i);
        if kept.is_empty() {
            return (None, bad);
        }
        let mut columns = payload;
        let pick = |f: &dyn Fn(&Incoming) -> Option<String>| -> ArrayRef {
            Arc::new(kept.iter().map(|&i| f(&msgs[i])).collect::<StringArray>())
        };
        for a in &self.cfg.attributes {
            columns.push(pick(&|m| m.attributes.get(a).cloned()));
        }
        if self.cfg.attributes_map.is_some() {
            let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
            for &i in &kept {
                let mut entries: Vec<(&String, &String)> = msgs[i].attributes.iter().collect();
                entries.sort();
                for (k, v) in entries {
                    b.keys().append_value(k);
                    b.values().append_value(v);
                }
                // Appending an entry list cannot fail: keys and values were appended in pairs.
                let _ = b.append(true);
            }
            columns.push(Arc::new(b.finish()));
        }
        let md = &self.cfg.metadata;
        if md.message_id.is_some() {
            columns.push(pick(&|m| Some(m.message_id.clone())));
        }
        if md.publish_time.is_some() {
            let a: TimestampMillisecondArray =
                kept.iter().map(|&i| msgs[i].publish_time_ms).collect();
            columns.push(Arc::new(a.with_timezone("UTC")));
        }
        if md.ordering_key.is_some() {
            columns.push(pick(&|m| Some(m.ordering_key.clone())));
        }
        if md.delivery_attempt.is_some() {
            let a: Int64Array = kept
                .iter()
                .map(|&i| msgs[i].delivery_attempt.map(i64::from))
                .collect();
            columns.push(Arc::new(a));
        }
        columns.push(Arc::new(Int64Array::from(times)));
        let id_attr = self.cfg.id_attribute.clone();
        columns.push(pick(&|m| {
            Some(
                id_attr
                    .as_ref()
                    .and_then(|a| m.attributes.get(a).cloned())
                    .unwrap_or_else(|| m.message_id.clone()),
            )
        }));
        match RecordBatch::try_new(self.schema.clone(), columns) {
            Ok(rows) => (Some(rows), bad),
            Err(e) => {
                // The columns are built from the schema above; a mismatch is a Sluice bug, but
                // the messages are not lost: they go to the error output.
                bad.extend(kept.iter().map(|&i| (i, format!("internal error: {e}"))));
                bad.sort_by_key(|(i, _)| *i);
                (None, bad)
            }
        }
    }

    /// The event time of `m`: its `timestamp_attribute`, else its publish time.
    fn event_time(&self, m: &Incoming) -> Result<i64, String> {
        match &self.cfg.timestamp_attribute {
            Some(a) => match m.attributes.get(a) {
                Some(v) => parse_timestamp(v, self.cfg.timestamp_unit).ok_or_else(|| {
                    format!("timestamp attribute `{a}` is neither RFC 3339 nor an integer epoch time: `{v}`")
                }),
                None => Err(format!("timestamp attribute `{a}` is missing")),
            },
            None => Ok(m
                .publish_time_ms
                .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())),
        }
    }
}

fn map_type() -> DataType {
    let b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()).finish();
    arrow::array::Array::data_type(&b).clone()
}

/// RFC 3339 text or an integer epoch time in `unit` (`auto`: below 10^11 seconds, else
/// milliseconds, which is Beam's unit for every present-day time).
pub fn parse_timestamp(v: &str, unit: crate::time::epoch::EpochUnit) -> Option<i64> {
    if let Ok(n) = v.trim().parse::<i64>() {
        return unit.int_to_millis(n);
    }
    chrono::DateTime::parse_from_rfc3339(v.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Decodes the JSON payloads of `candidates`; returns the rows, the message indices they came
/// from and their event times. Failures are appended to `bad`.
fn decode_json(
    decoder: &mut JsonDecoder,
    msgs: &[Incoming],
    candidates: &[usize],
    times: Vec<i64>,
    bad: &mut Vec<(usize, String)>,
) -> (Option<RecordBatch>, Vec<usize>, Vec<i64>) {
    // One line per message. A payload must be exactly one JSON object: checked here without
    // building values, so the decoder below sees one object per line.
    let mut text = Vec::new();
    let mut lines: Vec<(usize, i64, Vec<u8>)> = Vec::with_capacity(candidates.len());
    for (&i, t) in candidates.iter().zip(times) {
        match one_line(&msgs[i].data) {
            Ok(line) => lines.push((i, t, line)),
            Err(e) => bad.push((i, e)),
        }
    }
    for (_, _, l) in &lines {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    let (rows, bad_lines) = decoder.decode_lines(&text);
    // Line k of `text` is `lines[k]` (no payload line holds a newline): bad lines map to their
    // messages by index, whatever their bytes.
    let mut is_bad = vec![false; lines.len()];
    for b in bad_lines {
        match lines.get(b.line) {
            Some((i, _, _)) => {
                is_bad[b.line] = true;
                bad.push((*i, b.error));
            }
            None => tracing::error!(line = b.line, "Decoder reported a line it was not given"),
        }
    }
    let mut kept = Vec::with_capacity(lines.len());
    let mut kept_times = Vec::with_capacity(lines.len());
    for ((i, t, _), bad) in lines.iter().zip(is_bad) {
        if !bad {
            kept.push(*i);
            kept_times.push(*t);
        }
    }
    match rows {
        Some(r) if r.num_rows() == kept.len() => (Some(r), kept, kept_times),
        None if kept.is_empty() => (None, kept, kept_times),
        other => {
            // Cannot tell which row is which message: keep the data, report every message.
            let n = other.map_or(0, |r| r.num_rows());
            bad.extend(kept.iter().map(|&i| {
                (
                    i,
                    format!(
                        "internal error: {n} rows decoded from {} messages",
                        lines.len()
                    ),
                )
            }));
            (None, Vec::new(), Vec::new())
        }
    }
}

fn trim_end(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &b[..end]
}

/// The payload as one line holding one JSON object.
fn one_line(data: &[u8]) -> Result<Vec<u8>, String> {
    let first = data.iter().find(|c| !c.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(if first.is_none() {
            "empty message: expected one JSON object".to_string()
        } else {
            "expected one JSON object".to_string()
        });
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(data).map_err(|e| e.to_string())?;
    if data.contains(&b'\n') || data.contains(&b'\r') {
        // Pretty-printed: re-serialise compactly (rare; costs one parse).
        let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        return serde_json::to_vec(&v).map_err(|e| e.to_string());
    }
    Ok(trim_end(data).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::config::{MetadataFields, ReadFrom};
    use crate::record::rows::to_json_rows;

    fn cfg(format: Format) -> ReadConfig {
        ReadConfig {
            from: ReadFrom::Subscription(crate::config::yaml::Located::new(
                "s".into(),
                Default::default(),
            )),
            format,
            schema: Some(serde_json::json!({
                "type": "object",
                "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
                "required": ["id"]
            })),
            attributes: vec!["kind".into()],
            attributes_map: None,
            id_attribute: None,
            timestamp_attribute: None,
            timestamp_unit: Default::default(),
            metadata: MetadataFields {
                message_id: Some("message_id".into()),
                ..Default::default()
            },
            watermark: Default::default(),
            flow_control: Default::default(),
            subscription_settings: Default::default(),
            error_output: None,
        }
    }

    fn msg(id: &str, data: &str) -> Incoming {
        Incoming {
            data: bytes::Bytes::from(data.to_string()),
            attributes: [("kind".to_string(), "k".to_string())].into(),
            message_id: id.into(),
            publish_time_ms: Some(1_000),
            ..Default::default()
        }
    }

    #[test]
    fn good_and_bad_messages_are_separated_by_index() {
        let mut d = MessageDecoder::new(&cfg(Format::Json)).unwrap();
        let msgs = vec![
            msg("1", r#"{"id": 1, "name": "a"}"#),
            msg("2", "not json"),
            msg("3", "{\n  \"id\": 3\n}"),
            msg("4", r#"{"name": "no id"}"#),
            msg("5", r#"{"id": 5}{"id": 6}"#),
            msg("6", ""),
        ];
        let (rows, bad) = d.decode(&msgs);
        let rows = rows.unwrap();
        let json = to_json_rows(&crate::record::Batch::new(rows.clone()).user_rows());
        assert_eq!(
            serde_json::Value::from(
                json.into_iter()
                    .map(serde_json::Value::Object)
                    .collect::<Vec<_>>()
            ),
            serde_json::json!([
                {"id": 1, "name": "a", "kind": "k", "message_id": "1"},
                {"id": 3, "name": null, "kind": "k", "message_id": "3"}
            ])
        );
        let idx: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 3, 4, 5]);
        let ids = rows.column_by_name(meta::ROW_ID).unwrap();
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.value(1), "3");
    }

    #[test]
    fn an_invalid_utf8_message_fails_alone_and_keeps_its_bytes() {
        let mut d = MessageDecoder::new(&cfg(Format::Json)).unwrap();
        let bytes = |id: &str, data: &[u8]| Incoming {
            data: bytes::Bytes::copy_from_slice(data),
            message_id: id.into(),
            publish_time_ms: Some(1_000),
            ..Default::default()
        };
        let msgs = vec![
            bytes("1", br#"{"id": 1, "name": "a"}"#),
            bytes("2", b"{\"id\": 2, \"name\": \"bad\xff\"}"),
            bytes("3", br#"{"id": 3}"#),
            bytes("4", b"{\"id\": 4, \"name\": \"\xfe\"}"),
            bytes("5", br#"{"id": 5}"#),
        ];
        let (rows, bad) = d.decode(&msgs);
        let rows = rows.unwrap();
        let ids = rows.column_by_name(meta::ROW_ID).unwrap();
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), ["1", "3", "5"]);
        assert_eq!(
            bad,
            vec![
                (1, "invalid UTF-8".to_string()),
                (3, "invalid UTF-8".to_string())
            ]
        );
        assert_eq!(
            msgs[1].element(),
            crate::record::error_record::Element::Bytes(msgs[1].data.to_vec())
        );
    }

    #[test]
    fn raw_payload_and_timestamp_attribute() {
        let mut c = cfg(Format::Raw);
        c.timestamp_attribute = Some("ts".into());
        let mut d = MessageDecoder::new(&c).unwrap();
        let mut m1 = msg("1", "abc");
        m1.attributes
            .insert("ts".into(), "2026-01-01T00:00:01Z".into());
        let mut m2 = msg("2", "def");
        m2.attributes.insert("ts".into(), "1767225602000".into());
        let m3 = msg("3", "ghi");
        // Seconds are read as seconds (`auto`), not as 1970-01-21.
        let mut m4 = msg("4", "jkl");
        m4.attributes.insert("ts".into(), "1767225603".into());
        let (rows, bad) = d.decode(&[m1, m2, m3, m4]);
        let rows = rows.unwrap();
        assert_eq!(rows.num_rows(), 3);
        let ts = rows.column_by_name(meta::EVENT_TIME).unwrap();
        let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            ts.values(),
            &[1_767_225_601_000, 1_767_225_602_000, 1_767_225_603_000]
        );
        assert_eq!(bad.len(), 1);
        assert!(bad[0].1.contains("missing"), "{bad:?}");
        // A declared unit is exact: 5000 ms, as Beam reads every timestamp attribute.
        c.timestamp_unit = crate::time::epoch::EpochUnit::Millis;
        let mut d = MessageDecoder::new(&c).unwrap();
        let mut m5 = msg("5", "mno");
        m5.attributes.insert("ts".into(), "5000".into());
        let (rows, _) = d.decode(&[m5]);
        let rows = rows.unwrap();
        let ts = rows.column_by_name(meta::EVENT_TIME).unwrap();
        let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ts.values(), &[5000]);
    }

    /// Issue #20: a number that does not fit its integer field is an error record on Pub/Sub
    /// too (it used to become 2).
    #[test]
    fn a_fraction_in_an_integer_field_is_an_error_record() {
        let mut d = MessageDecoder::new(&cfg(Format::Json)).unwrap();
        let msgs = vec![
            msg("1", r#"{"id": 1}"#),
            msg("2", r#"{"id": 2.9}"#),
            msg("3", r#"{"id": -9223372036854775809}"#),
            msg("4", r#"{"id": 4, "name": "x"}"#),
        ];
        let (rows, bad) = d.decode(&msgs);
        let rows = rows.unwrap();
        let ids = rows.column_by_name("id").unwrap();
        let ids = ids.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 4]);
        assert_eq!(
            bad,
            vec![
                (
                    1,
                    "field `id`: 2.9 is not an integer (the field's type is integer)".to_string()
                ),
                (
                    2,
                    "field `id`: -9223372036854775809 is out of range for a 64-bit integer"
                        .to_string()
                ),
            ]
        );
    }
}
