//! Static checks of JSON Schemas in pipeline files (`ReadFromJson`/`ReadFromCsv`/`ReadFromPubSub`
//! `schema`, `ValidateWithSchema`): `type` values and misspelled keywords, with "did you mean"
//! and the position they were written at. A misspelled keyword would otherwise silently
//! disable its check, and `type: integr` used to pass `validate` and fail at run time.

use marked_yaml::Node;

use super::diag::{Pos, Reporter, did_you_mean, suggest};
use super::yaml::{pos_of, to_json};

/// JSON Schema's type names.
pub const TYPES: &[&str] = &[
    "string", "integer", "number", "boolean", "array", "object", "null",
];

/// Keywords of JSON Schema drafts 4 to 2020-12 and common annotations. Other keys are allowed
/// (the standard ignores unknown keywords) unless they look like a misspelling of one of these.
const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$ref",
    "$defs",
    "$comment",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$vocabulary",
    "definitions",
    "id",
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "contains",
    "minContains",
    "maxContains",
    "minItems",
    "maxItems",
    "uniqueItems",
    "unevaluatedItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "title",
    "description",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "nullable",
];

/// Keywords whose value is one schema.
const ONE: &[&str] = &[
    "additionalProperties",
    "propertyNames",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "contentSchema",
    "items",
];
/// Keywords whose value is a list of schemas.
const LIST: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems", "items"];
/// Keywords whose value maps names to schemas.
const MAP: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];

/// Checks a schema given inline as YAML, or as a JSON string (then problems are reported at
/// the string).
pub fn check(node: &Node, rep: &mut Reporter) {
    if let Node::Scalar(s) = node {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(s.as_str()) else {
            rep.error(
                pos_of(node),
                "a schema must be a mapping (JSON Schema written as YAML) or a JSON string",
                None,
            );
            return;
        };
        walk_json(&value, pos_of(node), 0, rep);
        return;
    }
    walk(node, 0, rep);
}

/// A reader's schema: [`check`], then what Sluice can turn into columns
/// (`record::schema::from_json_schema`). Returns the schema as JSON.
pub fn check_reader(node: &Node, rep: &mut Reporter) -> serde_json::Value {
    let before = rep.len();
    check(node, rep);
    let value = match to_json(node) {
        serde_json::Value::String(s) => {
            serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))
        }
        v => v,
    };
    if rep.len() == before
        && let Err(e) = crate::record::schema::from_json_schema(&value)
    {
        rep.error(pos_of(node), format!("invalid `schema`: {e}"), None);
    }
    value
}

/// Nesting checked; deeper schemas are left to the run (the YAML itself nests at most 128).
const MAX_DEPTH: usize = 64;

fn walk(node: &Node, depth: usize, rep: &mut Reporter) {
    let Node::Mapping(m) = node else { return };
    if depth > MAX_DEPTH {
        return;
    }
    for (k, v) in m.iter() {
        let key = k.as_str();
        let key_pos = Pos::from_span(k.span());
        if key == "type" {
            match v {
                Node::Scalar(s) => check_type(s.as_str(), pos_of(v), rep),
                Node::Sequence(seq) => {
                    for t in seq.iter() {
                        match t {
                            Node::Scalar(s) => check_type(s.as_str(), pos_of(t), rep),
                            _ => bad_type(pos_of(t), rep),
                        }
                    }
                }
                Node::Mapping(_) => bad_type(pos_of(v), rep),
            }
            continue;
        }
        check_keyword(key, key_pos, rep);
        if MAP.contains(&key)
            && let Node::Mapping(props) = v
        {
            for (_, sub) in props.iter() {
                walk(sub, depth + 1, rep);
            }
        }
        if LIST.contains(&key)
            && let Node::Sequence(items) = v
        {
            for sub in items.iter() {
                walk(sub, depth + 1, rep);
            }
        }
        if ONE.contains(&key) {
            walk(v, depth + 1, rep);
        }
    }
}

fn walk_json(value: &serde_json::Value, pos: Pos, depth: usize, rep: &mut Reporter) {
    use serde_json::Value;
    let Value::Object(m) = value else { return };
    if depth > MAX_DEPTH {
        return;
    }
    for (key, v) in m {
        if key == "type" {
            match v {
                Value::String(s) => check_type(s, pos, rep),
                Value::Array(ts) => {
                    for t in ts {
                        match t {
                            Value::String(s) => check_type(s, pos, rep),
                            _ => bad_type(pos, rep),
                        }
                    }
                }
                _ => bad_type(pos, rep),
            }
            continue;
        }
        check_keyword(key, pos, rep);
        match v {
            Value::Object(props) if MAP.contains(&key.as_str()) => props
                .values()
                .for_each(|s| walk_json(s, pos, depth + 1, rep)),
            Value::Array(items) if LIST.contains(&key.as_str()) => {
                items.iter().for_each(|s| walk_json(s, pos, depth + 1, rep))
            }
            _ if ONE.contains(&key.as_str()) => walk_json(v, pos, depth + 1, rep),
            _ => {}
        }
    }
}

fn check_type(t: &str, pos: Pos, rep: &mut Reporter) {
    if !TYPES.contains(&t) {
        rep.error(
            pos,
            format!("unknown JSON Schema type `{t}`"),
            Some(suggest(t, TYPES)),
        );
    }
}

fn bad_type(pos: Pos, rep: &mut Reporter) {
    rep.error(
        pos,
        "a JSON Schema `type` must be a type name or a list of them",
        Some(format!("one of: {}", TYPES.join(", "))),
    );
}

fn check_keyword(key: &str, pos: Pos, rep: &mut Reporter) {
    if KEYWORDS.contains(&key) || key.starts_with("x-") {
        return;
    }
    if let Some(hint) = did_you_mean(key, KEYWORDS.iter().copied()) {
        rep.error(
            pos,
            format!("unknown JSON Schema keyword `{key}`"),
            Some(hint),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let root = crate::config::yaml_load::parse(yaml).unwrap();
        let node = root.as_mapping().unwrap().get_node("schema").unwrap();
        let mut rep = Reporter::new("p.yaml");
        check(node, &mut rep);
        match rep.finish(()) {
            Ok(()) => Vec::new(),
            Err(d) => d.0.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn misspelled_types_and_keywords_are_found_where_they_are() {
        let got = problems(
            "schema:\n  type: object\n  propertes:\n    id: {type: integr}\n  properties:\n    id: {type: [integr, \"null\"]}\n    tags: {type: array, items: {type: strng}}\n",
        );
        assert_eq!(
            got,
            vec![
                "p.yaml:3:3: unknown JSON Schema keyword `propertes`\n  hint: did you mean `properties`?",
                "p.yaml:6:17: unknown JSON Schema type `integr`\n  hint: did you mean `integer`?",
                "p.yaml:7:39: unknown JSON Schema type `strng`\n  hint: did you mean `string`?",
            ]
        );
        assert!(problems("schema: '{\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"string\"}}, \"x-note\": 1}'\n").is_empty());
        assert_eq!(
            problems("schema: '{\"type\": \"integr\"}'\n"),
            vec!["p.yaml:1:9: unknown JSON Schema type `integr`\n  hint: did you mean `integer`?"]
        );
    }
}
