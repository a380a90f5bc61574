//! `validate`'s type checks where types follow from the file alone: a `Filter`'s `keep` must be
//! boolean. Its type is known for a literal, for an expression that reads no field, and for an
//! expression over an input whose schema is declared (`Create` rows, a reader's `schema`, a
//! `ReadFromPubSub` payload schema), passed on by the transforms in between (a `MapToFields`
//! gives its fields the types of their expressions, a `Combine` its keys' and aggregations'
//! types, an `Explode` its lists' item types, a stateless `Sql` query the types DataFusion
//! plans for it).
//! Elsewhere the check happens at run time, with the expression's position.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::graph::{Edge, Graph};
use crate::config::components::TransformConfig;
use crate::config::diag::Reporter;
use crate::config::{ExprKind, PipelineSpec};

/// Reports every `Filter` whose `keep` is known not to be boolean.
pub fn check_keep(spec: &PipelineSpec, graph: &Graph, rep: &mut Reporter) {
    for node in &graph.nodes {
        let t = &spec.transforms[node.spec];
        let TransformConfig::Filter { keep } = &t.config else {
            continue;
        };
        let found = match &keep.kind {
            ExprKind::Literal(v) if !v.is_boolean() && !v.is_null() => Some(match v {
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => "an integer".into(),
                serde_json::Value::Number(_) => "a number".into(),
                _ => format!("the value {v}"),
            }),
            ExprKind::Literal(_) => None,
            ExprKind::Field(_) | ExprKind::Sql(_) => {
                let schema = match &node.inputs[..] {
                    [edge] => known_schema(spec, graph, edge, 0),
                    _ => None,
                }
                .unwrap_or_else(|| Arc::new(Schema::empty()));
                expr_type(keep, &schema)
                    .filter(|dt| !matches!(dt, DataType::Boolean | DataType::Null))
                    .map(|dt| format!("type {dt}"))
            }
        };
        if let Some(what) = found {
            rep.error(
                keep.pos,
                format!(
                    "`keep` of `{}` must be a boolean expression, but it is {what}",
                    t.name
                ),
                Some("a Filter keeps the rows for which `keep` is true, e.g. `keep: amount > 0` (with `language: sql`) or a boolean field".into()),
            );
        }
    }
}

/// The type of `e` over `schema`, when it compiles (a field missing from a schema that may be
/// incomplete is not reported here).
fn expr_type(e: &crate::config::ExprSpec, schema: &SchemaRef) -> Option<DataType> {
    let compiled = crate::expr::compile(e, schema).ok()?;
    compiled.data_type(schema.as_ref()).ok()
}

/// The user columns (with types) arriving over `edge`, when the file alone says what they are.
pub fn known_schema(
    spec: &PipelineSpec,
    graph: &Graph,
    edge: &Edge,
    depth: usize,
) -> Option<SchemaRef> {
    let from = &graph.nodes[edge.from];
    if from.error_port == Some(edge.port) {
        return Some(crate::record::error_record::schema());
    }
    // Deeper chains are unusual; the run-time check covers them.
    if edge.port != 0 || depth > 32 {
        return None;
    }
    match &spec.transforms[from.spec].config {
        TransformConfig::Create { elements } if !elements.is_empty() => {
            crate::record::json::infer_from_values(elements).ok()
        }
        TransformConfig::ReadFromJson {
            schema: Some(s), ..
        }
        | TransformConfig::ReadFromCsv {
            schema: Some(s), ..
        } => crate::record::schema::from_json_schema(s).ok(),
        TransformConfig::ReadFromPubSub(r) => crate::pubsub::decode::MessageDecoder::new(r)
            .ok()
            .map(|d| d.schema().clone()),
        TransformConfig::MapToFields {
            fields,
            append,
            drop,
        } => {
            let [one] = &from.inputs[..] else {
                return None;
            };
            let input = known_schema(spec, graph, one, depth + 1)?;
            let mut out: Vec<Field> = Vec::new();
            if *append {
                out.extend(
                    input
                        .fields()
                        .iter()
                        .filter(|f| !drop.iter().any(|d| &d.value == f.name()))
                        .filter(|f| !fields.iter().any(|(n, _)| &n.value == f.name()))
                        .map(|f| f.as_ref().clone()),
                );
            }
            for (name, e) in fields {
                out.push(Field::new(&name.value, expr_type(e, &input)?, true));
            }
            Some(Arc::new(Schema::new(out)))
        }
        TransformConfig::Combine { group_by, combine } => {
            let input = single_input(spec, graph, from, depth)?;
            let mut out: Vec<Field> = Vec::new();
            for key in group_by {
                let f = input.field_with_name(&key.value).ok()?;
                out.push(f.clone().with_nullable(true));
            }
            for c in combine {
                let value_type = match &c.value {
                    Some(e) => expr_type(e, &input)?,
                    None => DataType::Int64,
                };
                let spec = crate::transforms::window::aggregate::AggSpec::new(c.func, &value_type);
                out.push(Field::new(&c.output, spec.ok()?.output_type(), true));
            }
            Some(Arc::new(Schema::new(out)))
        }
        TransformConfig::Explode { fields, .. } => {
            let input = single_input(spec, graph, from, depth)?;
            let out: Vec<Field> = input
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::List(item) | DataType::LargeList(item)
                        if fields.iter().any(|e| &e.value == f.name()) =>
                    {
                        Field::new(f.name(), item.data_type().clone(), true)
                    }
                    _ => f.as_ref().clone(),
                })
                .collect();
            Some(Arc::new(Schema::new(out)))
        }
        TransformConfig::Sql { query } => {
            let input = single_input(spec, graph, from, depth)?;
            let names = crate::transforms::sql::table_names(&spec.transforms[from.spec].inputs);
            crate::transforms::sql::stateless::Steps::output_schema(&query.value, &names, input)
        }
        TransformConfig::Filter { .. }
        | TransformConfig::Deduplicate { .. }
        | TransformConfig::AssignTimestamps { .. }
        | TransformConfig::WindowInto { .. }
        | TransformConfig::ValidateWithSchema { .. }
        | TransformConfig::Check(_) => match &from.inputs[..] {
            [one] => known_schema(spec, graph, one, depth + 1),
            _ => None,
        },
        _ => None,
    }
}

/// The known schema of `node`'s only input.
fn single_input(
    spec: &PipelineSpec,
    graph: &Graph,
    node: &super::graph::Node,
    depth: usize,
) -> Option<SchemaRef> {
    match &node.inputs[..] {
        [one] => known_schema(spec, graph, one, depth + 1),
        _ => None,
    }
}
