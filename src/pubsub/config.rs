//! The configs of `ReadFromPubSub` and `WriteToPubSub` (Beam YAML keys plus Sluice's extensions)
//! and how they are read from the pipeline file. These `///` docs are the user reference;
//! `docs/pubsub.md` shows them in context.

use std::time::Duration;

use marked_yaml::Node;

use crate::config::diag::{Pos, Reporter, suggest};
use crate::config::yaml::{Located, MapReader, pos_of};
use crate::pubsub::shard::{MAX_SHARDS, SHARD_PLACEHOLDER, is_per_shard};

/// Payload encoding, Beam's `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per message, decoded with the declared `schema`.
    Json,
    /// The payload as bytes, in a single `payload` column (Beam's RAW).
    Raw,
}

/// Where `ReadFromPubSub` reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadFrom {
    /// An existing subscription (`projects/P/subscriptions/S` or a bare id in the default
    /// project). Messages are acknowledged on it, so a restart resumes where the last run
    /// stopped.
    Subscription(Located<String>),
    /// A topic: Sluice creates a subscription for this run and deletes it at the end, so only
    /// messages published while the pipeline runs are read (as Beam does).
    Topic(Located<String>),
}

/// Columns for message metadata, a Sluice extension (`metadata_fields:`). Each is off unless
/// named: `{message_id: id, publish_time: published}` or the list form `[message_id]` (the
/// column then has the metadata's own name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataFields {
    /// Utf8: the Pub/Sub message id.
    pub message_id: Option<String>,
    /// Timestamp(ms, UTC): when Pub/Sub received the message.
    pub publish_time: Option<String>,
    /// Utf8: the ordering key (empty string when none).
    pub ordering_key: Option<String>,
    /// Int64: the delivery attempt, counted by Pub/Sub only when the subscription has a
    /// dead-letter policy (null otherwise).
    pub delivery_attempt: Option<String>,
}

pub const METADATA_NAMES: &[&str] = &[
    "message_id",
    "publish_time",
    "ordering_key",
    "delivery_attempt",
];

/// Source watermark settings, the Sluice extension `watermark: {max_delay, idle_timeout}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatermarkConfig {
    /// Watermark = max event time seen − `max_delay` (default 10s).
    pub max_delay: Duration,
    /// After this long without a message the watermark advances to wall-clock time −
    /// `max_delay`, so windows of an idle stream still close. Off unless given.
    pub idle_timeout: Option<Duration>,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            max_delay: Duration::from_secs(10),
            idle_timeout: None,
        }
    }
}

/// Client flow control, the Sluice extension `flow_control:`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlowControl {
    /// Messages held (pulled, not yet acknowledged) at most; the server stops sending beyond.
    pub max_outstanding_messages: i64,
    /// Payload bytes held at most.
    pub max_outstanding_bytes: i64,
    /// How long Sluice keeps extending the lease of a held message (default 1h).
    pub max_lease: Duration,
    /// How far each lease extension reaches (10s..600s, default 60s): after a crash, held
    /// messages are redelivered at most this long later.
    pub lease_extension: Duration,
    /// Linger: how long the source waits to fill a batch before emitting a smaller one.
    pub max_batch_delay: Duration,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl {
            // The client library's defaults: 1000 messages, 100 MiB.
            max_outstanding_messages: 1000,
            max_outstanding_bytes: 100 << 20,
            max_lease: Duration::from_secs(3600),
            lease_extension: Duration::from_secs(60),
            // 50 ms adds little latency and lets a busy stream fill batches of hundreds of
            // messages; Dataflow's streaming bundles are closed on a similar timescale.
            max_batch_delay: Duration::from_millis(50),
        }
    }
}

/// Dead-letter policy of a subscription `sluice setup` creates.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: Located<String>,
    /// 5..=100 on Pub/Sub (default 5).
    pub max_delivery_attempts: i32,
}

/// The Sluice extension `subscription_settings:` of `ReadFromPubSub`: what `sluice setup`
/// creates. Ignored by `sluice run`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionSettings {
    /// The topic the subscription attaches to (created too). Required with `subscription:`.
    pub topic: Option<Located<String>>,
    pub ack_deadline: Option<Duration>,
    pub retention: Option<Duration>,
    pub retain_acked_messages: bool,
    pub filter: Option<String>,
    pub enable_message_ordering: bool,
    pub dead_letter: Option<DeadLetter>,
}

/// `ReadFromPubSub`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadConfig {
    pub from: ReadFrom,
    pub format: Format,
    /// JSON Schema of the payload (required for `format: JSON`).
    pub schema: Option<serde_json::Value>,
    /// Attributes copied into string columns of the same name (null when absent).
    pub attributes: Vec<String>,
    /// A column holding every attribute as a map<string, string>.
    pub attributes_map: Option<String>,
    /// Attribute holding a unique id of the message: it becomes the row id (`__sluice_id`)
    /// instead of the Pub/Sub message id, so republished duplicates get the same id.
    pub id_attribute: Option<String>,
    /// Attribute holding the event time (RFC 3339, or an integer in `timestamp_unit`); the
    /// publish time is used without it.
    pub timestamp_attribute: Option<String>,
    /// Sluice extension: the unit of integer `timestamp_attribute` values (default `auto`:
    /// below 10^11 seconds, else milliseconds; `time::epoch`).
    pub timestamp_unit: crate::time::epoch::EpochUnit,
    pub metadata: MetadataFields,
    pub watermark: WatermarkConfig,
    pub flow_control: FlowControl,
    pub subscription_settings: SubscriptionSettings,
    /// Name of the error output, when `error_handling` is given inside `config` (Beam's place
    /// for I/O transforms). The transform-level `error_handling` works as well.
    pub error_output: Option<Located<String>>,
}

/// `WriteToPubSub`.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteConfig {
    pub topic: Located<String>,
    pub format: Format,
    /// Fields published as attributes (and left out of the payload).
    pub attributes: Vec<String>,
    /// A map<string, string> field whose entries become attributes.
    pub attributes_map: Option<String>,
    /// Attribute that receives the row's deterministic id (as does `sluice_id` always).
    pub id_attribute: Option<String>,
    /// Attribute that receives the row's event time in milliseconds since the epoch.
    pub timestamp_attribute: Option<String>,
    /// Sluice extension: field whose value is the message's ordering key.
    pub ordering_key: Option<String>,
    /// Sluice extension: keyed routing (`shard: {by, count}`), see [`ShardSpec`].
    pub shard: Option<ShardSpec>,
    pub error_output: Option<Located<String>>,
}

/// The Sluice extension `shard: {by: [fields], count: N}` of `WriteToPubSub`: every message
/// gets the attribute `sluice_shard` = its shard `K` in `0..N`, a stable hash of the `by`
/// values (`pubsub::shard`); a topic containing `{shard}` names one topic per shard and each
/// message goes to its shard's. One owner per shard then sees every row of its keys
/// (docs/scaling.md).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSpec {
    /// The key fields, in order (order matters to the hash).
    pub by: Vec<Located<String>>,
    /// The number of shards, 1..=1024.
    pub count: u32,
    /// Where `shard:` was written.
    pub pos: Pos,
}

impl ShardSpec {
    pub fn fields(&self) -> Vec<String> {
        self.by.iter().map(|f| f.value.clone()).collect()
    }
}

const READ_KEYS: &[&str] = &[
    "topic",
    "subscription",
    "format",
    "schema",
    "attributes",
    "attributes_map",
    "id_attribute",
    "timestamp_attribute",
    "timestamp_unit",
    "error_handling",
    "metadata_fields",
    "watermark",
    "flow_control",
    "subscription_settings",
];

const WRITE_KEYS: &[&str] = &[
    "topic",
    "format",
    "attributes",
    "attributes_map",
    "id_attribute",
    "timestamp_attribute",
    "ordering_key",
    "shard",
    "error_handling",
];

/// Reads `ReadFromPubSub`'s config; `None` when it is unusable (problems were reported).
pub fn parse_read(node: Option<&Node>, fallback: Pos, rep: &mut Reporter) -> Option<ReadConfig> {
    let mut r = MapReader::new(node, fallback, "`ReadFromPubSub` config", READ_KEYS, rep);
    let topic = r.string("topic", rep);
    let subscription = r.string("subscription", rep);
    let from = match (topic, subscription) {
        (Some(_), Some(s)) => {
            rep.error(
                s.pos,
                "give either `topic` or `subscription`, not both",
                Some("`subscription` reads an existing subscription; `topic` creates one for this run".into()),
            );
            None
        }
        (Some(t), None) => Some(ReadFrom::Topic(t)),
        (None, Some(s)) => Some(ReadFrom::Subscription(s)),
        (None, None) => {
            rep.error(
                r.pos(),
                "`ReadFromPubSub` needs `topic` or `subscription`",
                None,
            );
            None
        }
    };
    let format = format(&mut r, rep);
    let schema = r
        .node("schema")
        .map(|n| crate::config::schema_check::check_reader(n, rep));
    if format == Format::Json && schema.is_none() {
        rep.error(
            r.pos(),
            "`format: JSON` needs a `schema` (JSON Schema of the payload)",
            Some("or use `format: RAW` to read the payload as bytes".into()),
        );
    }
    let attributes = strings(&mut r, "attributes", rep);
    let attributes_map = r.string("attributes_map", rep).map(|s| s.value);
    let id_attribute = r.string("id_attribute", rep).map(|s| s.value);
    let timestamp_attribute = r.string("timestamp_attribute", rep).map(|s| s.value);
    let timestamp_unit = crate::config::components::epoch_unit(&mut r, "timestamp_unit", rep);
    let error_output = error_handling(&mut r, rep);
    let metadata = r
        .node("metadata_fields")
        .map(|n| metadata_fields(n, rep))
        .unwrap_or_default();
    let watermark = r
        .node("watermark")
        .map(|n| watermark(n, rep))
        .unwrap_or_default();
    let flow_control = r
        .node("flow_control")
        .map(|n| flow_control(n, rep))
        .unwrap_or_default();
    let subscription_settings = r
        .node("subscription_settings")
        .map(|n| subscription_settings(n, rep))
        .unwrap_or_default();
    r.finish(rep);
    Some(ReadConfig {
        from: from?,
        format,
        schema,
        attributes,
        attributes_map,
        id_attribute,
        timestamp_attribute,
        timestamp_unit,
        metadata,
        watermark,
        flow_control,
        subscription_settings,
        error_output,
    })
}

/// Reads `WriteToPubSub`'s config; `None` when it is unusable (problems were reported).
pub fn parse_write(node: Option<&Node>, fallback: Pos, rep: &mut Reporter) -> Option<WriteConfig> {
    let mut r = MapReader::new(node, fallback, "`WriteToPubSub` config", WRITE_KEYS, rep);
    let topic = r.required_string("topic", rep);
    let format = format(&mut r, rep);
    let attributes = strings(&mut r, "attributes", rep);
    let attributes_map = r.string("attributes_map", rep).map(|s| s.value);
    let id_attribute = r.string("id_attribute", rep).map(|s| s.value);
    let timestamp_attribute = r.string("timestamp_attribute", rep).map(|s| s.value);
    let ordering_key = r.string("ordering_key", rep).map(|s| s.value);
    let has_shard = r.has("shard");
    let shard = r.node("shard").and_then(|n| shard(n, rep));
    if let Some(t) = &topic
        && !has_shard
        && is_per_shard(&t.value)
    {
        rep.error(
            t.pos,
            format!(
                "topic `{}` names `{SHARD_PLACEHOLDER}`, but `WriteToPubSub` has no `shard:`",
                t.value
            ),
            Some(
                "add `shard: {by: [key fields], count: N}`, or drop `{shard}` from the topic"
                    .into(),
            ),
        );
    }
    let error_output = error_handling(&mut r, rep);
    r.finish(rep);
    Some(WriteConfig {
        topic: topic?,
        format,
        attributes,
        attributes_map,
        id_attribute,
        timestamp_attribute,
        ordering_key,
        shard,
        error_output,
    })
}

fn shard(node: &Node, rep: &mut Reporter) -> Option<ShardSpec> {
    let pos = pos_of(node);
    let mut r = MapReader::new(Some(node), pos, "`shard`", &["by", "count"], rep);
    let by = r.string_list("by", rep);
    let count_pos = r.node("count").map(pos_of).unwrap_or(pos);
    let count = r.u64("count", rep);
    let has_by = r.has("by");
    let has_count = r.has("count");
    r.finish(rep);
    let hint = || Some("e.g. `shard: {by: [recipe_id], count: 8}`".to_string());
    if !has_by || !has_count {
        let missing = if has_by { "count" } else { "by" };
        rep.error(
            pos,
            format!("`shard` is missing required key `{missing}`"),
            hint(),
        );
        return None;
    }
    let by = by?;
    if by.is_empty() {
        rep.error(
            pos,
            "`shard.by` names no field",
            Some("name the key fields whose values pick the shard, e.g. `by: [recipe_id]`".into()),
        );
        return None;
    }
    for f in &by {
        if crate::record::meta::is_hidden(&f.value) {
            rep.error(
                f.pos,
                format!("`{}` is a hidden column and cannot be a shard key", f.value),
                Some("shard by the row's own fields".into()),
            );
        }
    }
    let count = count?;
    if !(1..=u64::from(MAX_SHARDS)).contains(&count) {
        rep.error(
            count_pos,
            format!("`shard.count` must be between 1 and {MAX_SHARDS}, found {count}"),
            Some("the number of owners (StatefulSet replicas), each reading its shard's subscription".into()),
        );
    }
    // Kept (clamped) after a reported range error, so the key fields are still checked.
    Some(ShardSpec {
        by,
        count: count.clamp(1, u64::from(MAX_SHARDS)) as u32,
        pos,
    })
}

fn format(r: &mut MapReader<'_>, rep: &mut Reporter) -> Format {
    match r.string("format", rep) {
        None => Format::Json,
        Some(f) if f.value.eq_ignore_ascii_case("json") => Format::Json,
        Some(f) if f.value.eq_ignore_ascii_case("raw") => Format::Raw,
        Some(f) => {
            rep.error(
                f.pos,
                format!("Pub/Sub format `{}` is not supported", f.value),
                Some("Sluice reads and writes `JSON` and `RAW` (Avro and Protobuf are not in this build)".into()),
            );
            Format::Json
        }
    }
}

fn strings(r: &mut MapReader<'_>, key: &'static str, rep: &mut Reporter) -> Vec<String> {
    r.string_list(key, rep)
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.value)
        .collect()
}

fn error_handling(r: &mut MapReader<'_>, rep: &mut Reporter) -> Option<Located<String>> {
    let node = r.node("error_handling")?;
    let mut er = MapReader::new(
        Some(node),
        pos_of(node),
        "`error_handling`",
        &["output", "alert"],
        rep,
    );
    // A dead-letter alarm is read with the transform (config::spec).
    er.node("alert");
    let out = er.required_string("output", rep);
    er.finish(rep);
    out
}

fn metadata_fields(node: &Node, rep: &mut Reporter) -> MetadataFields {
    let mut m = MetadataFields::default();
    let mut set = |name: &str, column: String, pos: Pos, rep: &mut Reporter| match name {
        "message_id" => m.message_id = Some(column),
        "publish_time" => m.publish_time = Some(column),
        "ordering_key" => m.ordering_key = Some(column),
        "delivery_attempt" => m.delivery_attempt = Some(column),
        other => rep.error(
            pos,
            format!("unknown message metadata `{other}`"),
            Some(suggest(other, METADATA_NAMES)),
        ),
    };
    match node {
        Node::Mapping(map) => {
            for (k, v) in map.iter() {
                let column = v
                    .as_scalar()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| k.as_str().to_string());
                set(k.as_str(), column, Pos::from_span(k.span()), rep);
            }
        }
        other => {
            for f in
                crate::config::yaml::string_list(other, "metadata_fields", rep).unwrap_or_default()
            {
                set(&f.value.clone(), f.value, f.pos, rep);
            }
        }
    }
    m
}

fn watermark(node: &Node, rep: &mut Reporter) -> WatermarkConfig {
    let mut r = MapReader::new(
        Some(node),
        pos_of(node),
        "`watermark`",
        &["max_delay", "idle_timeout"],
        rep,
    );
    let mut w = WatermarkConfig::default();
    if let Some(d) = r.duration("max_delay", rep) {
        w.max_delay = d;
    }
    w.idle_timeout = r.duration("idle_timeout", rep);
    r.finish(rep);
    w
}

fn flow_control(node: &Node, rep: &mut Reporter) -> FlowControl {
    let mut r = MapReader::new(
        Some(node),
        pos_of(node),
        "`flow_control`",
        &[
            "max_outstanding_messages",
            "max_outstanding_bytes",
            "max_lease",
            "lease_extension",
            "max_batch_delay",
        ],
        rep,
    );
    let mut f = FlowControl::default();
    if let Some(v) = r.u64("max_outstanding_messages", rep) {
        f.max_outstanding_messages = i64::try_from(v).unwrap_or(i64::MAX);
    }
    if let Some(v) = r.u64("max_outstanding_bytes", rep) {
        f.max_outstanding_bytes = i64::try_from(v).unwrap_or(i64::MAX);
    }
    if let Some(d) = r.duration("max_lease", rep) {
        f.max_lease = d;
    }
    if let Some(d) = r.duration("lease_extension", rep) {
        f.lease_extension = d;
    }
    if let Some(d) = r.duration("max_batch_delay", rep) {
        f.max_batch_delay = d;
    }
    r.finish(rep);
    f
}

fn subscription_settings(node: &Node, rep: &mut Reporter) -> SubscriptionSettings {
    let mut r = MapReader::new(
        Some(node),
        pos_of(node),
        "`subscription_settings`",
        &[
            "topic",
            "ack_deadline",
            "retention",
            "retain_acked_messages",
            "filter",
            "enable_message_ordering",
            "dead_letter",
        ],
        rep,
    );
    let topic = r.string("topic", rep);
    let ack_deadline = r.duration("ack_deadline", rep);
    if let Some(d) = ack_deadline
        && !(10..=600).contains(&d.as_secs())
    {
        rep.error(
            r.pos(),
            "`ack_deadline` must be between 10s and 600s (Pub/Sub's limits)",
            None,
        );
    }
    let retention = r.duration("retention", rep);
    let retain_acked_messages = r.bool("retain_acked_messages", false, rep);
    let filter = r.string("filter", rep).map(|s| s.value);
    let enable_message_ordering = r.bool("enable_message_ordering", false, rep);
    let dead_letter = r.node("dead_letter").and_then(|n| {
        let mut d = MapReader::new(
            Some(n),
            pos_of(n),
            "`dead_letter`",
            &["topic", "max_delivery_attempts"],
            rep,
        );
        let topic = d.required_string("topic", rep);
        let attempts = d.u64("max_delivery_attempts", rep).unwrap_or(5);
        if !(5..=100).contains(&attempts) {
            rep.error(
                pos_of(n),
                "`max_delivery_attempts` must be between 5 and 100 (Pub/Sub's limits)",
                None,
            );
        }
        d.finish(rep);
        Some(DeadLetter {
            topic: topic?,
            max_delivery_attempts: attempts.clamp(5, 100) as i32,
        })
    });
    r.finish(rep);
    SubscriptionSettings {
        topic,
        ack_deadline,
        retention,
        retain_acked_messages,
        filter,
        enable_message_ordering,
        dead_letter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransformConfig;

    fn parse(config: &str) -> Result<TransformConfig, String> {
        let text = format!(
            "pipeline:\n  transforms:\n    - type: ReadFromPubSub\n      name: Read\n      config:\n{config}\n    - type: LogForTesting\n      input: Read\n"
        );
        crate::config::parse("p.yaml", &text, &Default::default())
            .map(|s| s.transforms[0].config.clone())
            .map_err(|d| d.to_string())
    }

    #[test]
    fn reads_beam_keys_and_extensions() {
        let c = parse(
            "        subscription: projects/p/subscriptions/s\n        format: RAW\n        attributes: [a, b]\n        metadata_fields: {message_id: mid}\n        watermark: {max_delay: 5s}\n        flow_control: {max_outstanding_messages: 10}\n        subscription_settings:\n          topic: t\n          dead_letter: {topic: dlq, max_delivery_attempts: 7}\n        error_handling: {output: bad}",
        )
        .unwrap();
        let TransformConfig::ReadFromPubSub(c) = c else {
            panic!("{c:?}")
        };
        assert_eq!(c.format, Format::Raw);
        assert_eq!(c.attributes, vec!["a", "b"]);
        assert_eq!(c.metadata.message_id.as_deref(), Some("mid"));
        assert_eq!(c.watermark.max_delay, Duration::from_secs(5));
        assert_eq!(c.flow_control.max_outstanding_messages, 10);
        let dl = c.subscription_settings.dead_letter.as_ref().unwrap();
        assert_eq!(
            (dl.topic.value.as_str(), dl.max_delivery_attempts),
            ("dlq", 7)
        );
        assert_eq!(c.error_output.as_ref().unwrap().value, "bad");
    }

    /// Parses and validates (graph checks included) a whole file, reporting everything in one
    /// go as `sluice validate` does.
    fn validated(text: &str) -> Result<crate::config::PipelineSpec, String> {
        let mut rep = Reporter::new("p.yaml");
        let spec = crate::config::spec::parse_into("p.yaml", text, &Default::default(), &mut rep);
        crate::pipeline::check_into(&spec, &mut rep);
        rep.finish(spec).map_err(|d| d.to_string())
    }

    fn parse_write(config: &str) -> Result<WriteConfig, String> {
        let text = format!(
            "pipeline:\n  transforms:\n    - type: Create\n      name: In\n      config: {{elements: [{{a: 1}}]}}\n    - type: WriteToPubSub\n      name: Out\n      input: In\n      config:\n{config}\n"
        );
        validated(&text).map(|s| {
            let TransformConfig::WriteToPubSub(c) = &s.transforms[1].config else {
                panic!("{:?}", s.transforms[1].config)
            };
            (**c).clone()
        })
    }

    #[test]
    fn reads_shard() {
        let c =
            parse_write("        topic: out-{shard}\n        shard: {by: [a], count: 8}").unwrap();
        let s = c.shard.unwrap();
        assert_eq!((s.fields(), s.count), (vec!["a".to_string()], 8));
        assert_eq!(s.by[0].pos.line, 11);
    }

    #[test]
    fn shard_problems_are_reported_where_they_are_written() {
        let cases = [
            (
                "        topic: t\n        shard: {by: [], count: 2}",
                "p.yaml:11:16: `shard.by` names no field",
            ),
            (
                "        topic: t\n        shard: {by: [a], count: 0}",
                "p.yaml:11:33: `shard.count` must be between 1 and 1024, found 0",
            ),
            (
                "        topic: t\n        shard: {by: [a], count: 1025}",
                "p.yaml:11:33: `shard.count` must be between 1 and 1024, found 1025",
            ),
            (
                "        topic: t\n        shard: {by: [a]}",
                "p.yaml:11:16: `shard` is missing required key `count`",
            ),
            (
                "        topic: t\n        shard: {by: [a], count: 2, key: x}",
                "p.yaml:11:36: unknown key `key` in `shard`",
            ),
            (
                "        topic: t-{shard}",
                "p.yaml:10:16: topic `t-{shard}` names `{shard}`, but `WriteToPubSub` has no `shard:`",
            ),
            (
                "        topic: t\n        shard: {by: [b], count: 2}",
                "p.yaml:11:22: shard key `b` is not a field of `Out`'s input `In`",
            ),
            (
                "        topic: t\n        shard: {by: [__sluice_id], count: 2}",
                "p.yaml:11:22: `__sluice_id` is a hidden column and cannot be a shard key",
            ),
        ];
        for (config, expected) in cases {
            let e = parse_write(config).unwrap_err();
            assert!(e.contains(expected), "{config}: {e}");
            assert!(e.contains("hint: "), "{e}");
        }
        // A bad count does not hide the key check, nor claim that `shard:` is missing.
        let e = parse_write("        topic: t-{shard}\n        shard: {by: [b], count: 0}")
            .unwrap_err();
        assert!(e.contains("found 0") && e.contains("shard key `b`"), "{e}");
        assert!(!e.contains("has no `shard:`"), "{e}");
    }

    #[test]
    fn shard_keys_are_checked_against_a_pubsub_schema_through_maps_and_filters() {
        let text = "pipeline:\n  transforms:\n    - type: ReadFromPubSub\n      name: Read\n      config:\n        subscription: s\n        schema: {type: object, properties: {recipe_id: {type: string}, n: {type: integer}}}\n        attributes: [src]\n    - type: Filter\n      name: Keep\n      input: Read\n      config: {language: sql, keep: 'n > 0'}\n    - type: MapToFields\n      name: Add\n      input: Keep\n      config: {language: sql, append: true, fields: {m: 'n * 2'}}\n    - type: WriteToPubSub\n      name: Out\n      input: Add\n      config:\n        topic: t\n        shard: {by: [recipe_id, src, m, recipe], count: 2}\n";
        let e = validated(text).map(|_| ()).unwrap_err();
        assert_eq!(
            e,
            "p.yaml:22:41: shard key `recipe` is not a field of `Out`'s input `Add`\n  hint: did you mean `recipe_id`?"
        );
    }

    #[test]
    fn reports_problems_with_positions() {
        let e = parse("        topic: t\n        subscription: s").unwrap_err();
        assert!(e.contains("either `topic` or `subscription`"), "{e}");
        let e = parse("        subscription: s\n        format: JSON").unwrap_err();
        assert!(e.contains("needs a `schema`"), "{e}");
        let e = parse(
            "        subscription: s\n        format: AVRO\n        metadata_fields: [msg_id]",
        )
        .unwrap_err();
        assert!(e.contains("AVRO") && e.contains("msg_id"), "{e}");
    }
}
