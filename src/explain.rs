//! `sluice explain`: the resolved graph in the words of a pipeline file. As text, one line per
//! transform (type, inputs, named outputs, windowing as written, what a source reads and a sink
//! writes, the valve of a halting `Check`), then the pipeline's gates and state backend; as a
//! Mermaid `flowchart` for docs and reviews. Connection URLs are shown without credentials.

use std::fmt::Write;

use crate::config::{PipelineSpec, TransformConfig, WindowKind, Windowing};
use crate::pipeline::Graph;

/// The resolved graph as text.
pub fn text(spec: &PipelineSpec, graph: &Graph) -> String {
    let mut s = format!("pipeline {} ({})\n", spec.name, spec.file);
    for &i in &graph.order {
        let n = &graph.nodes[i];
        let inputs: Vec<String> = n
            .inputs
            .iter()
            .map(|e| {
                let r = input_ref(graph, e.from, e.port);
                match &e.alias {
                    Some(a) => format!("{a}={r}"),
                    None => r,
                }
            })
            .collect();
        let _ = write!(s, "  {} [{}]", n.name, n.type_name);
        if !inputs.is_empty() {
            let _ = write!(s, " <- {}", inputs.join(", "));
        }
        let outs: Vec<&str> = n.ports.iter().skip(1).map(String::as_str).collect();
        if !outs.is_empty() {
            let _ = write!(s, "; outputs: {}", outs.join(", "));
        }
        if n.windowing != Windowing::global() {
            let _ = write!(s, "; windowing: {}", windowing(&n.windowing));
        }
        let config = &spec.transforms[n.spec].config;
        if let Some(t) = target(config) {
            let _ = write!(s, "; {t}");
        }
        if let Some(v) = valve(spec, n.spec) {
            let _ = write!(s, "; {v}");
        }
        s.push('\n');
    }
    let valves: Vec<String> = (0..spec.transforms.len())
        .filter(|&i| valve(spec, i).is_some())
        .map(|i| format!("{}/{}", spec.name, spec.transforms[i].name))
        .collect();
    if valves.is_empty() {
        s.push_str("valves: none\n");
    } else {
        let _ = writeln!(s, "valves: {}", valves.join(", "));
    }
    let opts = &spec.options;
    if opts.gates.is_empty() {
        s.push_str("gates: none\n");
    } else {
        let gates: Vec<&str> = opts.gates.iter().map(|g| g.value.as_str()).collect();
        let _ = writeln!(s, "gates: {}", gates.join(", "));
    }
    if let Some(topic) = &opts.control_topic {
        let _ = writeln!(s, "control topic: {}", topic.value);
    }
    let _ = writeln!(s, "state: {}", state(&opts.state));
    s
}

/// The resolved graph as a Mermaid `flowchart`: one node per transform labelled with its name,
/// type and what it reads or writes; one edge per input, labelled with the output it comes
/// from (dashed for error outputs) and the `Sql` alias.
pub fn mermaid(spec: &PipelineSpec, graph: &Graph) -> String {
    let mut s = String::from("flowchart LR\n");
    for &i in &graph.order {
        let n = &graph.nodes[i];
        let mut label = format!("{}<br/>{}", escape(&n.name), escape(&n.type_name));
        // Where the windowing is set, not on every node that inherits it.
        let set_here = n
            .inputs
            .iter()
            .all(|e| graph.nodes[e.from].windowing != n.windowing);
        if n.windowing != Windowing::global() && set_here {
            let _ = write!(
                label,
                "<br/>windowing: {}",
                escape(&windowing(&n.windowing))
            );
        }
        let config = &spec.transforms[n.spec].config;
        if let Some(t) = target(config) {
            let _ = write!(label, "<br/>{}", escape(&t));
        }
        if let Some(v) = valve(spec, n.spec) {
            let _ = write!(label, "<br/>{}", escape(&v));
        }
        let _ = writeln!(s, "  n{i}[\"{label}\"]");
    }
    for &i in &graph.order {
        for e in &graph.nodes[i].inputs {
            let from = &graph.nodes[e.from];
            let mut label: Vec<String> = Vec::new();
            if !from.ports[e.port].is_empty() {
                label.push(from.ports[e.port].clone());
            }
            if let Some(a) = &e.alias {
                label.push(format!("as {a}"));
            }
            let arrow = if from.error_port == Some(e.port) {
                "-.->"
            } else {
                "-->"
            };
            if label.is_empty() {
                let _ = writeln!(s, "  n{} {arrow} n{i}", e.from);
            } else {
                let _ = writeln!(
                    s,
                    "  n{} {arrow}|\"{}\"| n{i}",
                    e.from,
                    escape(&label.join(" "))
                );
            }
        }
    }
    s
}

fn input_ref(graph: &Graph, from: usize, port: usize) -> String {
    let from = &graph.nodes[from];
    match from.ports[port].as_str() {
        "" => from.name.clone(),
        p => format!("{}.{p}", from.name),
    }
}

/// Mermaid label text: quotes and markup characters as entities.
fn escape(text: &str) -> String {
    text.replace('&', "#amp;")
        .replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

/// A windowing as a pipeline file says it: `fixed 1m`, `sliding 10m every 1m`,
/// `sessions gap 5m`, `global`, then lateness, early panes and accumulation when set.
pub fn windowing(w: &Windowing) -> String {
    let mut s = match w.kind {
        WindowKind::Global => "global".to_string(),
        WindowKind::Fixed { size_ms, .. } => format!("fixed {}", millis(size_ms)),
        WindowKind::Sliding {
            size_ms, period_ms, ..
        } => format!("sliding {} every {}", millis(size_ms), millis(period_ms)),
        WindowKind::Sessions { gap_ms } => format!("sessions gap {}", millis(gap_ms)),
    };
    if let WindowKind::Fixed { offset_ms, .. } | WindowKind::Sliding { offset_ms, .. } = w.kind
        && offset_ms != 0
    {
        let _ = write!(s, " offset {}", millis(offset_ms));
    }
    if w.allowed_lateness_ms > 0 {
        let _ = write!(s, ", allowed lateness {}", millis(w.allowed_lateness_ms));
        if !w.late_panes {
            s.push_str(", no late panes");
        }
    }
    if let Some(every) = w.early_every {
        let _ = write!(s, ", early panes every {}", duration(every));
    }
    if w.accumulating {
        s.push_str(", accumulating");
    }
    s
}

/// Milliseconds in the largest unit that divides them exactly: `1m`, `90s`, `1500ms`, `1d`.
pub fn millis(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    UNITS
        .iter()
        .find(|(size, _)| ms != 0 && ms % size == 0)
        .map_or_else(
            || format!("{ms}ms"),
            |(size, unit)| format!("{}{unit}", ms / size),
        )
}

fn duration(d: std::time::Duration) -> String {
    millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a source reads or a sink writes, `None` for other transforms.
fn target(config: &TransformConfig) -> Option<String> {
    use crate::bigquery::config::ReadSource;
    use crate::pubsub::config::ReadFrom;
    use crate::sinks::redis::Mode;
    Some(match config {
        TransformConfig::ReadFromJson { path, .. }
        | TransformConfig::ReadFromCsv { path, .. }
        | TransformConfig::ReadFromParquet { path } => format!("reads path {}", path.value),
        TransformConfig::WriteToJson(f)
        | TransformConfig::WriteToCsv { sink: f, .. }
        | TransformConfig::WriteToParquet(f) => format!("writes path {}", f.path.value),
        TransformConfig::ReadFromPubSub(r) => match &r.from {
            ReadFrom::Subscription(s) => format!("reads subscription {}", s.value),
            ReadFrom::Topic(t) => format!("reads topic {}", t.value),
        },
        TransformConfig::WriteToPubSub(w) => {
            let mut s = format!("writes topic {}", w.topic.value);
            if let Some(shard) = &w.shard {
                let _ = write!(
                    s,
                    ", sharded by [{}] into {}",
                    shard.fields().join(", "),
                    shard.count
                );
                if crate::pubsub::shard::is_per_shard(&w.topic.value) {
                    s.push_str(" topics");
                } else {
                    s.push_str(" (attribute sluice_shard)");
                }
            }
            s
        }
        TransformConfig::ReadFromBigQuery(r) => match &r.source {
            ReadSource::Table(t) => format!("reads BigQuery table {}", table_ref(t)),
            ReadSource::Query(_) => "reads a BigQuery query".to_string(),
        },
        TransformConfig::WriteToBigQuery(w) => {
            format!("writes BigQuery table {}", table_ref(&w.table.value))
        }
        TransformConfig::WriteToPostgres(p) => {
            let what = match &p.table {
                Some(t) => format!("table {t}"),
                None => "with write_statement".to_string(),
            };
            format!("writes Postgres {what} at {}", crate::state::redact(&p.url))
        }
        TransformConfig::WriteToRedis(r) => {
            let mode = match &r.mode {
                Mode::Hash { .. } => "hash",
                Mode::Json => "json",
                Mode::String { .. } => "string",
                Mode::Zset { .. } => "zset",
            };
            format!(
                "writes Redis keys {} ({mode}) at {}",
                template(&r.key),
                crate::state::redact(&r.url)
            )
        }
        _ => return None,
    })
}

fn table_ref(t: &crate::bigquery::config::TableRef) -> String {
    match &t.project {
        Some(p) => format!("{p}.{}.{}", t.dataset, t.table),
        None => format!("{}.{}", t.dataset, t.table),
    }
}

fn template(t: &crate::sinks::redis::Template) -> String {
    use crate::sinks::redis::config::Part;
    t.parts
        .iter()
        .map(|p| match p {
            Part::Lit(l) => l.replace('{', "{{").replace('}', "}}"),
            Part::Field(f) => format!("{{{f}}}"),
        })
        .collect()
}

/// The valve of transform `i` if it is a `Check` that halts on failure, named as gates name it
/// (`pipeline/Check`).
fn valve(spec: &PipelineSpec, i: usize) -> Option<String> {
    let TransformConfig::Check(c) = &spec.transforms[i].config else {
        return None;
    };
    if !c.on_failure.halts() {
        return None;
    }
    let mut s = format!(
        "valve {}/{}: closes on failure",
        spec.name, spec.transforms[i].name
    );
    if let Some(after) = c.retry_after {
        let _ = write!(s, ", re-checks after {}", duration(after));
    }
    Some(s)
}

fn state(st: &crate::state::StateConfig) -> String {
    use crate::state::Backend;
    match st.backend {
        Backend::Memory => "memory (nothing survives a restart)".to_string(),
        _ => {
            let mut s = st.backend.name().to_string();
            if let Some(path) = &st.path {
                let _ = write!(s, " {}", crate::state::redact(path));
            }
            let _ = write!(s, ", checkpoint every {}", duration(st.checkpoint_interval));
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(kind: WindowKind) -> Windowing {
        Windowing {
            kind,
            ..Windowing::global()
        }
    }

    #[test]
    fn windowing_in_the_words_of_a_pipeline_file() {
        assert_eq!(windowing(&Windowing::global()), "global");
        let fixed = WindowKind::Fixed {
            size_ms: 60_000,
            offset_ms: 0,
        };
        assert_eq!(windowing(&w(fixed)), "fixed 1m");
        let fixed_offset = WindowKind::Fixed {
            size_ms: 3_600_000,
            offset_ms: 90_000,
        };
        assert_eq!(windowing(&w(fixed_offset)), "fixed 1h offset 90s");
        let sliding = WindowKind::Sliding {
            size_ms: 600_000,
            period_ms: 60_000,
            offset_ms: 0,
        };
        assert_eq!(windowing(&w(sliding)), "sliding 10m every 1m");
        let sessions = WindowKind::Sessions { gap_ms: 300_000 };
        assert_eq!(windowing(&w(sessions)), "sessions gap 5m");
        let triggered = Windowing {
            kind: fixed,
            allowed_lateness_ms: 120_000,
            early_every: Some(std::time::Duration::from_millis(1500)),
            late_panes: true,
            accumulating: true,
        };
        assert_eq!(
            windowing(&triggered),
            "fixed 1m, allowed lateness 2m, early panes every 1500ms, accumulating"
        );
        let no_late = Windowing {
            late_panes: false,
            ..triggered
        };
        assert_eq!(
            windowing(&no_late),
            "fixed 1m, allowed lateness 2m, no late panes, early panes every 1500ms, accumulating"
        );
    }

    #[test]
    fn millis_use_the_largest_exact_unit() {
        assert_eq!(millis(0), "0ms");
        assert_eq!(millis(250), "250ms");
        assert_eq!(millis(1000), "1s");
        assert_eq!(millis(90_000), "90s");
        assert_eq!(millis(7_200_000), "2h");
        assert_eq!(millis(86_400_000), "1d");
    }

    #[test]
    fn mermaid_labels_escape_quotes_and_markup() {
        assert_eq!(
            escape("a \"b\" <c> & d"),
            "a #quot;b#quot; #lt;c#gt; #amp; d"
        );
    }
}
