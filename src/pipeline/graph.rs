//! The resolved graph: transforms as nodes, named output ports, edges by reference, and the
//! structural checks `validate` reports (unknown or cyclic inputs, unconsumed error outputs).

use std::collections::{BTreeMap, VecDeque};

use crate::config::components::TransformConfig;
use crate::config::diag::{Reporter, did_you_mean};
use crate::config::{InputRef, PipelineSpec, Windowing};

/// An edge into a node: `from`'s output `port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: usize,
    pub port: usize,
    /// `input: {alias: Name}`: the name `Sql` uses for this input.
    pub alias: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub type_name: String,
    /// Index into `PipelineSpec::transforms`.
    pub spec: usize,
    pub inputs: Vec<Edge>,
    /// Output ports: index 0 is the main output (named ""), then error and named outputs.
    pub ports: Vec<String>,
    pub error_port: Option<usize>,
    /// The windowing of this node's output (set by `WindowInto` or `windowing:`, else inherited).
    pub windowing: Windowing,
}

impl Node {
    pub fn port(&self, name: &str) -> Option<usize> {
        self.ports.iter().position(|p| p == name)
    }
}

#[derive(Debug, Clone)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Node indices in an order where every node comes after its inputs.
    pub order: Vec<usize>,
}

/// Transform types that read no input.
pub fn is_source(config: &TransformConfig) -> bool {
    matches!(
        config,
        TransformConfig::Create { .. }
            | TransformConfig::ReadFromJson { .. }
            | TransformConfig::ReadFromCsv { .. }
            | TransformConfig::ReadFromParquet { .. }
            | TransformConfig::ReadFromPubSub(_)
            | TransformConfig::ReadFromBigQuery(_)
    )
}

/// Sources that end (files, inline elements, BigQuery reads without `high_water_mark.every`).
/// Any other source, e.g. `ReadFromPubSub`, is unbounded.
pub fn is_bounded_source(config: &TransformConfig) -> bool {
    match config {
        TransformConfig::ReadFromBigQuery(c) => {
            c.high_water_mark.as_ref().is_none_or(|h| h.every.is_none())
        }
        _ => matches!(
            config,
            TransformConfig::Create { .. }
                | TransformConfig::ReadFromJson { .. }
                | TransformConfig::ReadFromCsv { .. }
                | TransformConfig::ReadFromParquet { .. }
        ),
    }
}

/// Transform types whose output is not meant to be consumed.
pub fn is_sink(config: &TransformConfig) -> bool {
    matches!(
        config,
        TransformConfig::WriteToJson(_)
            | TransformConfig::WriteToCsv { .. }
            | TransformConfig::WriteToParquet(_)
            | TransformConfig::WriteToPostgres(_)
            | TransformConfig::WriteToRedis(_)
            | TransformConfig::WriteToBigQuery(_)
            | TransformConfig::AssertEqual { .. }
            | TransformConfig::WriteToPubSub(_)
    )
}

impl Graph {
    /// Resolves `spec` into a graph, reporting every structural problem to `rep`.
    pub fn build(spec: &PipelineSpec, rep: &mut Reporter) -> Graph {
        let mut nodes: Vec<Node> = spec
            .transforms
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut ports = vec![String::new()];
                if let TransformConfig::Partition {
                    outputs,
                    unknown_output,
                    ..
                } = &t.config
                {
                    ports.extend(outputs.iter().map(|o| o.value.clone()));
                    ports.extend(unknown_output.iter().map(|o| o.value.clone()));
                }
                let error_port = t.error_output.as_ref().map(|e| {
                    ports.push(e.value.clone());
                    ports.len() - 1
                });
                Node {
                    name: t.name.clone(),
                    type_name: t.type_name.clone(),
                    spec: i,
                    inputs: Vec::new(),
                    ports,
                    error_port,
                    windowing: Windowing::global(),
                }
            })
            .collect();
        let by_name: BTreeMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();

        for (i, t) in spec.transforms.iter().enumerate() {
            let source = is_source(&t.config);
            if source && !t.inputs.is_empty() {
                rep.error(
                    t.inputs[0].pos,
                    format!("`{}` is a source and takes no `input`", t.name),
                    None,
                );
            }
            if !source
                && t.inputs.is_empty()
                && !matches!(
                    t.config,
                    TransformConfig::Invalid | TransformConfig::Unsupported { .. }
                )
            {
                rep.error(
                    t.pos,
                    format!("`{}` has no `input`", t.name),
                    Some(input_hint(spec)),
                );
            }
            for r in &t.inputs {
                if let Some(edge) = resolve(r, &by_name, &nodes, rep) {
                    nodes[i].inputs.push(edge);
                }
            }
        }

        let order = topological(&nodes, spec, rep);
        check_error_outputs(spec, &nodes, rep);
        assign_windowing(spec, &mut nodes, &order);
        Graph { nodes, order }
    }

    /// Consumers of each (node, port), in node order.
    pub fn consumers(&self) -> BTreeMap<(usize, usize), Vec<(usize, usize)>> {
        let mut out: BTreeMap<(usize, usize), Vec<(usize, usize)>> = BTreeMap::new();
        for (to, n) in self.nodes.iter().enumerate() {
            for (input, e) in n.inputs.iter().enumerate() {
                out.entry((e.from, e.port)).or_default().push((to, input));
            }
        }
        out
    }

    /// Whether `node`'s input ends: every source upstream of it is bounded.
    pub fn is_bounded(&self, spec: &PipelineSpec, node: usize) -> bool {
        let mut seen = vec![false; self.nodes.len()];
        let mut todo = vec![node];
        while let Some(i) = todo.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            let n = &self.nodes[i];
            if n.inputs.is_empty() && !is_bounded_source(&spec.transforms[n.spec].config) {
                return false;
            }
            todo.extend(n.inputs.iter().map(|e| e.from));
        }
        true
    }

    pub fn node(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The source nodes (no inputs) that `node` reads from, directly or not, in index order.
    pub fn upstream_sources(&self, node: usize) -> Vec<usize> {
        let mut seen = vec![false; self.nodes.len()];
        let mut todo = vec![node];
        let mut sources = Vec::new();
        while let Some(i) = todo.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            if self.nodes[i].inputs.is_empty() {
                sources.push(i);
            }
            todo.extend(self.nodes[i].inputs.iter().map(|e| e.from));
        }
        sources.sort_unstable();
        sources
    }

    /// Every source node.
    pub fn sources(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].inputs.is_empty())
            .collect()
    }
}

fn input_hint(spec: &PipelineSpec) -> String {
    let names: Vec<&str> = spec.transforms.iter().map(|t| t.name.as_str()).collect();
    format!("add `input:` naming one of: {}", names.join(", "))
}

fn resolve(
    r: &InputRef,
    by_name: &BTreeMap<String, usize>,
    nodes: &[Node],
    rep: &mut Reporter,
) -> Option<Edge> {
    let Some(&from) = by_name.get(&r.transform) else {
        let hint =
            did_you_mean(&r.transform, by_name.keys().map(String::as_str)).unwrap_or_else(|| {
                format!(
                    "transforms are: {}",
                    by_name.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            });
        rep.error(
            r.pos,
            format!("input `{}` names no transform", r.display()),
            Some(hint),
        );
        return None;
    };
    let port = match &r.output {
        None => 0,
        Some(o) => match nodes[from].port(o) {
            Some(p) if p > 0 => p,
            _ => {
                let outs: Vec<&str> = nodes[from]
                    .ports
                    .iter()
                    .skip(1)
                    .map(String::as_str)
                    .collect();
                let hint = if outs.is_empty() {
                    format!(
                        "`{}` has only its main output; write `{}`",
                        r.transform, r.transform
                    )
                } else {
                    did_you_mean(o, outs.iter().copied())
                        .unwrap_or_else(|| format!("its outputs are: {}", outs.join(", ")))
                };
                rep.error(
                    r.pos,
                    format!("`{}` has no output named `{o}`", r.transform),
                    Some(hint),
                );
                return None;
            }
        },
    };
    Some(Edge {
        from,
        port,
        alias: r.alias.clone(),
    })
}

fn topological(nodes: &[Node], spec: &PipelineSpec, rep: &mut Reporter) -> Vec<usize> {
    let mut indegree: Vec<usize> = nodes.iter().map(|n| n.inputs.len()).collect();
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (to, n) in nodes.iter().enumerate() {
        for e in &n.inputs {
            downstream[e.from].push(to);
        }
    }
    let mut ready: VecDeque<usize> = (0..nodes.len()).filter(|i| indegree[*i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &d in &downstream[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    if order.len() < nodes.len() {
        let cyclic: Vec<usize> = (0..nodes.len()).filter(|i| indegree[*i] > 0).collect();
        let names: Vec<&str> = cyclic.iter().map(|&i| nodes[i].name.as_str()).collect();
        for &i in &cyclic {
            let t = &spec.transforms[nodes[i].spec];
            let pos = t.inputs.first().map(|r| r.pos).unwrap_or(t.pos);
            rep.error(
                pos,
                format!(
                    "`{}` is part of an input cycle ({})",
                    nodes[i].name,
                    names.join(" → ")
                ),
                Some("a pipeline is a directed acyclic graph; break the cycle".into()),
            );
        }
    }
    order
}

/// Beam YAML refuses a declared error output that nothing reads: errors would vanish silently.
fn check_error_outputs(spec: &PipelineSpec, nodes: &[Node], rep: &mut Reporter) {
    for (i, n) in nodes.iter().enumerate() {
        let Some(port) = n.error_port else { continue };
        let consumed = nodes
            .iter()
            .any(|m| m.inputs.iter().any(|e| e.from == i && e.port == port));
        if !consumed {
            let decl = spec.transforms[n.spec]
                .error_output
                .as_ref()
                .expect("error port implies declaration");
            rep.error(
                decl.pos,
                format!("error output `{}.{}` is not consumed", n.name, decl.value),
                Some(format!(
                    "send it somewhere, e.g. a transform with `input: {}.{}` that writes it out, or remove `error_handling`",
                    n.name, decl.value
                )),
            );
        }
    }
}

fn assign_windowing(spec: &PipelineSpec, nodes: &mut [Node], order: &[usize]) {
    for &i in order {
        let t = &spec.transforms[nodes[i].spec];
        let inherited = nodes[i]
            .inputs
            .first()
            .map(|e| nodes[e.from].windowing)
            .unwrap_or_else(Windowing::global);
        nodes[i].windowing = match (&t.config, &t.windowing) {
            (_, Some(w)) => w.value,
            (TransformConfig::WindowInto { windowing }, _) => windowing.value,
            _ => inherited,
        };
    }
}
