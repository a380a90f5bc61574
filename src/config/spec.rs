//! The parsed pipeline: Beam YAML's `pipeline:` (chain or composite, `source`/`sink` shorthands),
//! `options:` and `tests:`, resolved into a flat list of named transforms with explicit inputs.

use std::collections::BTreeMap;

use marked_yaml::Node;

use crate::alerts::dead_letter::{DeadLetterAlarm, parse_alarm};

use super::components::{TransformConfig, parse_config};
use super::diag::{Diagnostics, Pos, Reporter, did_you_mean, suggest};
use super::template;
use super::window::{Windowing, parse_windowing};
use super::yaml::{Located, MapReader, kind_of, pos_of};

/// A whole pipeline file, parsed and with inputs resolved by name.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub file: String,
    /// `options.name`, else the file stem; part of every deterministic row id.
    pub name: String,
    pub transforms: Vec<TransformSpec>,
    pub options: Options,
    pub tests: Vec<TestSpec>,
}

#[derive(Debug, Clone)]
pub struct TransformSpec {
    pub name: String,
    pub type_name: String,
    pub pos: Pos,
    pub inputs: Vec<InputRef>,
    pub config: TransformConfig,
    pub windowing: Option<Located<Windowing>>,
    /// `error_handling.output`: the name of this transform's error output, if declared.
    pub error_output: Option<Located<String>>,
    /// `error_handling.alert`: a dead-letter alarm on the error output.
    pub error_alert: Option<DeadLetterAlarm>,
}

/// A reference to another transform's output: `Name` or `Name.output`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRef {
    /// The alias for this input (`input: {alias: Name}`), used by `Sql` as a table name.
    pub alias: Option<String>,
    pub transform: String,
    pub output: Option<String>,
    pub pos: Pos,
}

impl InputRef {
    pub fn display(&self) -> String {
        match &self.output {
            Some(o) => format!("{}.{o}", self.transform),
            None => self.transform.clone(),
        }
    }
}

/// What a graceful stop does with open windows (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Drain {
    #[default]
    Flush,
    Keep,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub name: Option<String>,
    pub streaming: Option<bool>,
    pub drain: Drain,
    /// How long a graceful stop may take (default [`DEFAULT_DRAIN_TIMEOUT`]); past it the run
    /// exits 1 and what was not written is redelivered.
    pub drain_timeout: Option<std::time::Duration>,
    /// Rows per batch produced by sources (default 8192, DataFusion's batch size).
    pub batch_size: Option<usize>,
    /// Sluice extension: the Pub/Sub topic where this pipeline's valves publish their state
    /// and where its gates learn other pipelines' valves (docs/checks.md).
    pub control_topic: Option<Located<String>>,
    /// Sluice extension: other pipelines' valves (`pipeline/Check`) that pause this one while
    /// closed.
    pub gates: Vec<Located<String>>,
    /// `options.state` (Sluice extension): where stateful transforms checkpoint (default:
    /// memory, no checkpoints; docs/guarantees.md).
    pub state: crate::state::StateConfig,
    /// `options.limits` (Sluice extension): windows per element, shards (config::limits).
    pub limits: super::limits::Limits,
}

#[derive(Debug, Clone)]
pub struct TestSpec {
    pub name: String,
    pub pos: Pos,
    pub mock_inputs: Vec<NamedElements>,
    pub expected_outputs: Vec<NamedElements>,
    pub expected_inputs: Vec<NamedElements>,
}

#[derive(Debug, Clone)]
pub struct NamedElements {
    pub name: Located<String>,
    pub elements: Vec<serde_json::Value>,
}

const TOP_KEYS: &[&str] = &["pipeline", "options", "tests"];
const PIPELINE_KEYS: &[&str] = &["type", "transforms", "source", "sink"];
const TRANSFORM_KEYS: &[&str] = &[
    "type",
    "name",
    "input",
    "config",
    "windowing",
    "error_handling",
];
/// Default `options.drain_timeout`: within the Deployment's `terminationGracePeriodSeconds`
/// (120 s), leaving 30 s for the last acknowledgements to be confirmed.
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

const OPTION_KEYS: &[&str] = &[
    "name",
    "streaming",
    "drain",
    "drain_timeout",
    "batch_size",
    "control_topic",
    "gates",
    "state",
    "limits",
];

/// Loads, renders and parses a pipeline file.
///
/// # Errors
/// Every problem found, each with its position and a hint.
pub fn load(
    path: &std::path::Path,
    vars: &BTreeMap<String, String>,
) -> Result<PipelineSpec, Diagnostics> {
    let mut rep = Reporter::new(path.display().to_string());
    let spec = load_into(path, vars, &mut rep);
    rep.finish(spec)
}

/// Renders (Jinja) and parses pipeline text; `file` is used in diagnostics and as default name.
///
/// # Errors
/// Every problem found, each with its position and a hint.
pub fn parse(
    file: &str,
    source: &str,
    vars: &BTreeMap<String, String>,
) -> Result<PipelineSpec, Diagnostics> {
    let mut rep = Reporter::new(file);
    let spec = parse_into(file, source, vars, &mut rep);
    rep.finish(spec)
}

/// Like [`parse`], but leaves the problems in `rep` so later checks (the graph) can add theirs
/// and the user sees everything in one run. `None` when the text is not YAML at all.
pub fn parse_into(
    file: &str,
    source: &str,
    vars: &BTreeMap<String, String>,
    rep: &mut Reporter,
) -> PipelineSpec {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    if let Err(e) = super::source::check_controls(source) {
        rep.error(e.pos, e.message, e.hint);
        return PipelineSpec::empty(file);
    }
    let rendered = match template::render(file, source, vars) {
        Ok(r) => r,
        Err((line, msg)) => {
            let hint = if msg.starts_with("undefined variable") {
                "define variables with --var KEY=VALUE or in the environment"
            } else {
                "pipeline files are Jinja templates: fix the template, or write a literal `{{` as `{{ '{{' }}`"
            };
            rep.error(
                Pos { line, col: 1 },
                format!("template error: {msg}"),
                Some(hint.into()),
            );
            return PipelineSpec::empty(file);
        }
    };
    let limit = super::source::max_pipeline_bytes();
    let checked = if rendered.len() as u64 > limit {
        Err(super::source::too_large(
            "the rendered pipeline (after Jinja)",
            limit,
        ))
    } else {
        super::source::check_controls(&rendered)
    };
    if let Err(e) = checked {
        rep.error(e.pos, e.message, e.hint);
        return PipelineSpec::empty(file);
    }
    let root = match super::yaml_load::parse(&rendered) {
        Ok(n) => n,
        Err(e) => {
            rep.error(e.pos, format!("invalid YAML: {}", e.message), e.hint);
            return PipelineSpec::empty(file);
        }
    };
    parse_root(file, &root, rep)
}

/// Reads a pipeline file into `rep` (see [`parse_into`]): at most
/// [`super::source::max_pipeline_bytes`] bytes, UTF-8, a leading byte-order mark skipped.
pub fn load_into(
    path: &std::path::Path,
    vars: &BTreeMap<String, String>,
    rep: &mut Reporter,
) -> PipelineSpec {
    let file = path.display().to_string();
    let bytes = super::source::read_bounded(path, super::source::max_pipeline_bytes());
    match bytes
        .as_deref()
        .map_err(Clone::clone)
        .and_then(super::source::decode)
    {
        Ok(source) => parse_into(&file, source, vars, rep),
        Err(e) => {
            rep.error(e.pos, e.message, e.hint);
            PipelineSpec::empty(&file)
        }
    }
}

impl PipelineSpec {
    pub fn empty(file: &str) -> Self {
        PipelineSpec {
            file: file.to_string(),
            name: String::new(),
            transforms: Vec::new(),
            options: Options::default(),
            tests: Vec::new(),
        }
    }

    pub fn transform(&self, name: &str) -> Option<&TransformSpec> {
        self.transforms.iter().find(|t| t.name == name)
    }
}

fn parse_root(file: &str, root: &Node, rep: &mut Reporter) -> PipelineSpec {
    let mut spec = PipelineSpec::empty(file);
    let mut top = MapReader::new(
        Some(root),
        Pos { line: 1, col: 1 },
        "the pipeline file",
        TOP_KEYS,
        rep,
    );
    let options = top.node("options");
    spec.options = parse_options(options, rep);
    spec.name = spec.options.name.clone().unwrap_or_else(|| {
        std::path::Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pipeline".into())
    });
    match top.node("pipeline") {
        Some(p) => {
            spec.transforms = parse_pipeline(p, rep);
            super::limits::check(&spec.transforms, &spec.options.limits, rep);
        }
        None => rep.error(
            top.pos(),
            "the file has no `pipeline:` section",
            Some("a Beam YAML file starts with `pipeline:` holding `transforms:`".into()),
        ),
    }
    if let Some(tests) = top.node("tests") {
        spec.tests = parse_tests(tests, rep);
    }
    top.finish(rep);
    spec
}

fn parse_options(node: Option<&Node>, rep: &mut Reporter) -> Options {
    let mut r = MapReader::new(node, Pos::default(), "`options`", OPTION_KEYS, rep);
    let mut o = Options {
        name: r.string("name", rep).map(|l| l.value),
        streaming: r.has("streaming").then(|| r.bool("streaming", false, rep)),
        ..Options::default()
    };
    if let Some(d) = r.string("drain", rep) {
        o.drain = match d.value.as_str() {
            "flush" => Drain::Flush,
            "keep" => Drain::Keep,
            other => {
                rep.error(
                    d.pos,
                    format!("unknown drain mode `{other}`"),
                    Some(suggest(other, &["flush", "keep"])),
                );
                Drain::Flush
            }
        };
    }
    o.drain_timeout = r.duration("drain_timeout", rep);
    o.batch_size = r.u64("batch_size", rep).map(|v| v.max(1) as usize);
    o.control_topic = r.string("control_topic", rep);
    o.gates = r.string_list("gates", rep).unwrap_or_default();
    for g in &o.gates {
        let parts: Vec<&str> = g.value.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.trim().is_empty()) {
            rep.error(
                g.pos,
                format!("gate `{}` is not `pipeline/valve`", g.value),
                Some("name the other pipeline (its `options.name` or file stem) and its Check, e.g. `orders_export/VolumeCheck`".into()),
            );
        }
    }
    if let (Some(g), None) = (o.gates.first(), &o.control_topic) {
        rep.error(
            g.pos,
            "`gates` need `options.control_topic`: the topic where the other pipeline publishes its valves",
            Some("set the same `control_topic` in both pipelines".into()),
        );
    }
    o.state = crate::state::config::parse(r.node("state"), r.pos(), rep);
    o.limits = super::limits::parse(r.node("limits"), r.pos(), rep);
    r.finish(rep);
    o
}

fn parse_pipeline(node: &Node, rep: &mut Reporter) -> Vec<TransformSpec> {
    // `pipeline:` may be a bare list of transforms (a chain), as Beam YAML also allows.
    if let Node::Sequence(_) = node {
        return parse_transform_list(node, true, rep);
    }
    let mut r = MapReader::new(Some(node), pos_of(node), "`pipeline`", PIPELINE_KEYS, rep);
    let chain = match r.string("type", rep) {
        None => false,
        Some(t) => match t.value.as_str() {
            "chain" => true,
            "composite" => false,
            other => {
                rep.error(
                    t.pos,
                    format!("unknown pipeline type `{other}`"),
                    Some(suggest(other, &["chain", "composite"])),
                );
                false
            }
        },
    };
    let mut transforms = Vec::new();
    let source = r.node("source");
    let sink = r.node("sink");
    if (source.is_some() || sink.is_some()) && !chain {
        rep.error(
            pos_of(source.or(sink).expect("one of them is present")),
            "`source` and `sink` shorthands need `type: chain`",
            Some("add `type: chain` to the pipeline, or declare the source as a transform".into()),
        );
    }
    if let Some(s) = source {
        transforms.extend(parse_transform(s, rep));
    }
    match r.node("transforms") {
        Some(list) => transforms.extend(parse_transform_list(list, chain, rep)),
        None => rep.error(r.pos(), "`pipeline` has no `transforms:`", None),
    }
    if let Some(s) = sink {
        transforms.extend(parse_transform(s, rep));
    }
    r.finish(rep);
    // Names first: a chain links each transform to the previous one by name.
    default_names(&mut transforms, rep);
    if chain {
        link_chain(&mut transforms, rep);
    }
    transforms
}

fn parse_transform_list(node: &Node, _chain: bool, rep: &mut Reporter) -> Vec<TransformSpec> {
    let Node::Sequence(seq) = node else {
        rep.error(
            pos_of(node),
            format!("`transforms` must be a list, found {}", kind_of(node)),
            None,
        );
        return Vec::new();
    };
    seq.iter().filter_map(|t| parse_transform(t, rep)).collect()
}

/// In a chain, each transform reads the previous one's main output.
fn link_chain(transforms: &mut [TransformSpec], rep: &mut Reporter) {
    for i in 1..transforms.len() {
        if !transforms[i].inputs.is_empty() {
            rep.error(
                transforms[i].inputs[0].pos,
                format!("`{}` declares `input` inside a chain", transforms[i].name),
                Some(
                    "in `type: chain` each transform reads the previous one; remove `input`".into(),
                ),
            );
        }
        let prev = transforms[i - 1].name.clone();
        let pos = transforms[i].pos;
        transforms[i].inputs = vec![InputRef {
            alias: None,
            transform: prev,
            output: None,
            pos,
        }];
    }
}

/// Beam YAML names an unnamed transform after its type; several of one type get `Type (N)` names
/// internally (which no `input:` can spell) and must be referred to through a `name`.
fn default_names(transforms: &mut [TransformSpec], rep: &mut Reporter) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in transforms.iter() {
        *seen.entry(t.name.clone()).or_default() += 1;
    }
    let mut counters: BTreeMap<String, usize> = BTreeMap::new();
    for t in transforms.iter_mut() {
        let count = seen[&t.name];
        if count > 1 {
            let n = counters.entry(t.name.clone()).or_default();
            *n += 1;
            if *n > 1 {
                if t.name != t.type_name {
                    rep.error(
                        t.pos,
                        format!("transform name `{}` is used more than once", t.name),
                        Some("give each transform a unique `name`".into()),
                    );
                }
                t.name = format!("{} ({})", t.name, n);
            }
        }
    }
}

fn parse_transform(node: &Node, rep: &mut Reporter) -> Option<TransformSpec> {
    let mut r = MapReader::new(Some(node), pos_of(node), "a transform", TRANSFORM_KEYS, rep);
    if !matches!(node, Node::Mapping(_)) {
        return None;
    }
    let type_name = r.required_string("type", rep)?;
    let name = r
        .string("name", rep)
        .map(|n| n.value)
        .unwrap_or_else(|| type_name.value.clone());
    let inputs = r
        .node("input")
        .map(|n| parse_inputs(n, rep))
        .unwrap_or_default();
    let config_node = r.node("config");
    let config = parse_config(&type_name, config_node, rep);
    let windowing = r.node("windowing").and_then(|w| parse_windowing(w, rep));
    // Beam YAML also accepts `error_handling` inside `config` (WriteToBigQuery documents it
    // there); components that accept it list it among their config keys.
    let config_error_handling = match config_node {
        Some(marked_yaml::Node::Mapping(m)) => m.get_node("error_handling"),
        _ => None,
    };
    let (error_output, error_alert) = r
        .node("error_handling")
        .or(config_error_handling)
        .map(|e| parse_error_handling(e, rep))
        .unwrap_or_default();
    let error_output = error_output.or_else(|| config.config_error_output().cloned());
    r.finish(rep);
    Some(TransformSpec {
        name,
        pos: type_name.pos,
        type_name: type_name.value,
        inputs,
        config,
        windowing,
        error_output,
        error_alert,
    })
}

/// `error_handling`: `output` (the error output's name) and `alert` (a dead-letter alarm).
fn parse_error_handling(
    node: &Node,
    rep: &mut Reporter,
) -> (Option<Located<String>>, Option<DeadLetterAlarm>) {
    let mut er = MapReader::new(
        Some(node),
        pos_of(node),
        "`error_handling`",
        &["output", "alert"],
        rep,
    );
    let alert = er.node("alert");
    let out = match alert {
        Some(a) if !er.has("output") => {
            er.node("output");
            rep.error(
                pos_of(a),
                "`error_handling.alert` needs an error output",
                Some("add `output: NAME` and consume it (e.g. write it to a dead-letter topic); the alarm measures the share of records sent there".into()),
            );
            None
        }
        _ => er.required_string("output", rep),
    };
    let alarm = alert.and_then(|a| parse_alarm(a, rep));
    er.finish(rep);
    (out, alarm)
}

fn parse_inputs(node: &Node, rep: &mut Reporter) -> Vec<InputRef> {
    let one = |alias: Option<String>, n: &Node, rep: &mut Reporter| -> Option<InputRef> {
        match n {
            Node::Scalar(s) => {
                let text = s.as_str();
                let (transform, output) = match text.split_once('.') {
                    Some((t, o)) => (t.to_string(), Some(o.to_string())),
                    None => (text.to_string(), None),
                };
                Some(InputRef {
                    alias,
                    transform,
                    output,
                    pos: pos_of(n),
                })
            }
            other => {
                rep.error(
                    pos_of(other),
                    format!(
                        "an input must be a transform name, found {}",
                        kind_of(other)
                    ),
                    None,
                );
                None
            }
        }
    };
    match node {
        Node::Scalar(_) => one(None, node, rep).into_iter().collect(),
        Node::Sequence(seq) => seq.iter().filter_map(|n| one(None, n, rep)).collect(),
        Node::Mapping(map) => map
            .iter()
            .filter_map(|(k, v)| one(Some(k.as_str().to_string()), v, rep))
            .collect(),
    }
}

fn parse_tests(node: &Node, rep: &mut Reporter) -> Vec<TestSpec> {
    let Node::Sequence(seq) = node else {
        rep.error(pos_of(node), "`tests` must be a list", None);
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, t) in seq.iter().enumerate() {
        let mut r = MapReader::new(
            Some(t),
            pos_of(t),
            "a test",
            &["name", "mock_inputs", "expected_outputs", "expected_inputs"],
            rep,
        );
        let name = r
            .string("name", rep)
            .map(|n| n.value)
            .unwrap_or_else(|| format!("test {}", i + 1));
        let mut lists = ["mock_inputs", "expected_outputs", "expected_inputs"].map(|key| {
            r.node(key)
                .map(|n| parse_named_elements(n, key, rep))
                .unwrap_or_default()
        });
        r.finish(rep);
        let spec = TestSpec {
            name,
            pos: pos_of(t),
            mock_inputs: std::mem::take(&mut lists[0]),
            expected_outputs: std::mem::take(&mut lists[1]),
            expected_inputs: std::mem::take(&mut lists[2]),
        };
        if spec.expected_outputs.is_empty() && spec.expected_inputs.is_empty() {
            rep.error(
                spec.pos,
                format!("test `{}` checks nothing", spec.name),
                Some("add `expected_outputs` or `expected_inputs`".into()),
            );
        }
        out.push(spec);
    }
    out
}

fn parse_named_elements(node: &Node, key: &str, rep: &mut Reporter) -> Vec<NamedElements> {
    let Node::Sequence(seq) = node else {
        rep.error(
            pos_of(node),
            format!("`{key}` must be a list of {{name, elements}}"),
            None,
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in seq.iter() {
        let mut r = MapReader::new(
            Some(item),
            pos_of(item),
            format!("an entry of `{key}`"),
            &["name", "elements"],
            rep,
        );
        let name = r.required_string("name", rep);
        let elements = match r.node("elements") {
            Some(Node::Sequence(s)) => super::yaml::elements_to_json(s, rep),
            Some(other) => {
                rep.error(pos_of(other), "`elements` must be a list", None);
                Vec::new()
            }
            None => {
                rep.error(
                    r.pos(),
                    format!("an entry of `{key}` needs `elements`"),
                    None,
                );
                Vec::new()
            }
        };
        r.finish(rep);
        if let Some(name) = name {
            out.push(NamedElements { name, elements });
        }
    }
    out
}

/// The names a reference could have meant, for "did you mean" on unknown inputs.
pub fn closest_name<'a>(got: &str, names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    did_you_mean(got, names)
}
