//! Reading marked YAML nodes: typed accessors that report `file:line:col` problems.
//!
//! Pipeline configs are read by hand from `marked_yaml` nodes rather than through serde so that
//! every value keeps its position, unknown keys get a "did you mean", and all problems of a file
//! are collected in one pass.

use std::collections::BTreeSet;
use std::time::Duration;

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};

use super::diag::{Pos, Reporter, suggest};
use super::duration::parse_duration;

/// A value with the position it was written at.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> Located<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Located { value, pos }
    }
}

pub fn pos_of(node: &Node) -> Pos {
    Pos::from_span(node.span())
}

pub fn kind_of(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a scalar",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

/// Converts a YAML node to JSON with YAML 1.2 core-schema typing of plain scalars
/// (quoted scalars always stay strings).
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar(s) => scalar_to_json(s),
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

fn scalar_to_json(s: &MarkedScalarNode) -> serde_json::Value {
    use serde_json::Value;
    let text = s.as_str();
    if !s.may_coerce() {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    if looks_numeric(text)
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

/// Inline rows (`Create`, `AssertEqual`, a test's `mock_inputs`) as JSON, with their numbers
/// checked as a data file's are (`record::numbers`): a number never changes silently. Reported
/// at the number: an integer beyond 64 bits (it used to become a float), a number beyond ±1.8e308
/// (it used to become a string), and, in a field whose rows mix integers and fractions (the
/// column is then a float, as in Beam), an integer that a float cannot hold exactly.
pub fn elements_to_json(seq: &[Node], rep: &mut Reporter) -> Vec<serde_json::Value> {
    use std::collections::HashSet;
    let mut floats: HashSet<&str> = HashSet::new();
    for element in seq {
        check_numbers(element, rep);
        if let Node::Mapping(m) = element {
            for (k, v) in m.iter() {
                if to_json(v)
                    .as_number()
                    .is_some_and(serde_json::Number::is_f64)
                {
                    floats.insert(k.as_str());
                }
            }
        }
    }
    for element in seq {
        let Node::Mapping(m) = element else { continue };
        for (k, v) in m.iter() {
            let Node::Scalar(s) = v else { continue };
            if !floats.contains(k.as_str()) {
                continue;
            }
            if let Some(i) = to_json(v).as_i64()
                && (i as f64) as i128 != i128::from(i)
            {
                rep.error(
                    Pos::from_span(s.span()),
                    format!(
                        "{i} cannot be held exactly by the float column `{}` (other rows have fractions)",
                        k.as_str()
                    ),
                    Some("write it as a string, or keep integers and fractions in separate fields".into()),
                );
            }
        }
    }
    seq.iter().map(to_json).collect()
}

/// Reports numbers in `node` that JSON conversion would change.
fn check_numbers(node: &Node, rep: &mut Reporter) {
    match node {
        Node::Sequence(seq) => seq.iter().for_each(|n| check_numbers(n, rep)),
        Node::Mapping(map) => map.values().for_each(|n| check_numbers(n, rep)),
        Node::Scalar(s) => {
            let text = s.as_str();
            if !s.may_coerce() || !looks_numeric(text) || text.parse::<i64>().is_ok() {
                return;
            }
            let pos = Pos::from_span(s.span());
            let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
            let integral = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            if integral {
                rep.error(
                    pos,
                    format!("{text} is out of range for a 64-bit integer"),
                    Some("write it as a string".into()),
                );
            } else if text.parse::<f64>().is_ok_and(|f| !f.is_finite()) {
                rep.error(
                    pos,
                    format!("{text} is out of range for a 64-bit float (about ±1.8e308)"),
                    Some("write it as a string".into()),
                );
            }
        }
    }
}

fn looks_numeric(text: &str) -> bool {
    let t = text.trim_start_matches(['-', '+']);
    t.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && t.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
}

/// Typed, position-reporting access to one YAML mapping (a transform's `config:` and the like).
///
/// Every key read is remembered; [`MapReader::finish`] reports the keys nobody read as unknown,
/// with a "did you mean" over the keys this component accepts.
pub struct MapReader<'a> {
    map: Option<&'a MarkedMappingNode>,
    pos: Pos,
    what: String,
    known: &'static [&'static str],
    seen: BTreeSet<&'a str>,
}

impl<'a> MapReader<'a> {
    /// `node` may be absent (no `config:`), which reads as an empty mapping.
    pub fn new(
        node: Option<&'a Node>,
        fallback: Pos,
        what: impl Into<String>,
        known: &'static [&'static str],
        rep: &mut Reporter,
    ) -> Self {
        let what = what.into();
        let map = match node {
            Some(Node::Mapping(m)) => Some(m),
            Some(other) => {
                rep.error(
                    pos_of(other),
                    format!("{what} must be a mapping, found {}", kind_of(other)),
                    None,
                );
                None
            }
            None => None,
        };
        MapReader {
            map,
            pos: node.map(pos_of).unwrap_or(fallback),
            what,
            known,
            seen: BTreeSet::new(),
        }
    }

    pub fn pos(&self) -> Pos {
        self.pos
    }

    pub fn node(&mut self, key: &'a str) -> Option<&'a Node> {
        self.seen.insert(key);
        self.map?.get_node(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.is_some_and(|m| m.get_node(key).is_some())
    }

    pub fn string(&mut self, key: &'a str, rep: &mut Reporter) -> Option<Located<String>> {
        let node = self.node(key)?;
        match node {
            Node::Scalar(s) => Some(Located::new(s.as_str().to_string(), pos_of(node))),
            other => {
                rep.error(
                    pos_of(other),
                    format!("`{key}` must be a string, found {}", kind_of(other)),
                    None,
                );
                None
            }
        }
    }

    pub fn required_string(&mut self, key: &'a str, rep: &mut Reporter) -> Option<Located<String>> {
        if !self.has(key) {
            self.seen.insert(key);
            rep.error(
                self.pos,
                format!("{} is missing required key `{key}`", self.what),
                None,
            );
            return None;
        }
        self.string(key, rep)
    }

    pub fn bool(&mut self, key: &'a str, default: bool, rep: &mut Reporter) -> bool {
        match self.node(key) {
            None => default,
            Some(node) => match to_json(node) {
                serde_json::Value::Bool(b) => b,
                _ => {
                    rep.error(pos_of(node), format!("`{key}` must be true or false"), None);
                    default
                }
            },
        }
    }

    pub fn u64(&mut self, key: &'a str, rep: &mut Reporter) -> Option<u64> {
        let node = self.node(key)?;
        match to_json(node).as_u64() {
            Some(v) => Some(v),
            None => {
                rep.error(
                    pos_of(node),
                    format!("`{key}` must be a non-negative integer"),
                    None,
                );
                None
            }
        }
    }

    pub fn f64(&mut self, key: &'a str, rep: &mut Reporter) -> Option<f64> {
        let node = self.node(key)?;
        match to_json(node).as_f64() {
            Some(v) => Some(v),
            None => {
                rep.error(pos_of(node), format!("`{key}` must be a number"), None);
                None
            }
        }
    }

    pub fn duration(&mut self, key: &'a str, rep: &mut Reporter) -> Option<Duration> {
        let node = self.node(key)?;
        let Node::Scalar(s) = node else {
            rep.error(
                pos_of(node),
                format!("`{key}` must be a duration such as 30s"),
                None,
            );
            return None;
        };
        match parse_duration(s.as_str()) {
            Ok(d) => Some(d),
            Err(e) => {
                rep.error(pos_of(node), e, None);
                None
            }
        }
    }

    /// A list of strings; a single string is accepted as a one-element list (Beam YAML does too).
    pub fn string_list(
        &mut self,
        key: &'a str,
        rep: &mut Reporter,
    ) -> Option<Vec<Located<String>>> {
        let node = self.node(key)?;
        string_list(node, key, rep)
    }

    /// Reports unknown keys. Call once, after reading every key this component accepts.
    pub fn finish(self, rep: &mut Reporter) {
        let Some(map) = self.map else { return };
        for (k, _) in map.iter() {
            let key = k.as_str();
            if !self.seen.contains(key) {
                rep.error(
                    Pos::from_span(k.span()),
                    format!("unknown key `{key}` in {}", self.what),
                    Some(if self.known.is_empty() {
                        "this takes no keys".to_string()
                    } else {
                        suggest(key, self.known)
                    }),
                );
            }
        }
    }
}

pub fn string_list(node: &Node, key: &str, rep: &mut Reporter) -> Option<Vec<Located<String>>> {
    match node {
        Node::Scalar(s) => Some(vec![Located::new(s.as_str().to_string(), pos_of(node))]),
        Node::Sequence(seq) => {
            let mut out = Vec::with_capacity(seq.len());
            for item in seq.iter() {
                match item {
                    Node::Scalar(s) => out.push(Located::new(s.as_str().to_string(), pos_of(item))),
                    other => rep.error(
                        pos_of(other),
                        format!("`{key}` items must be strings, found {}", kind_of(other)),
                        None,
                    ),
                }
            }
            Some(out)
        }
        Node::Mapping(_) => {
            rep.error(
                pos_of(node),
                format!("`{key}` must be a list of strings"),
                None,
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_scalars_stay_strings_and_plain_ones_are_typed() {
        let opts = marked_yaml::LoaderOptions::default().prevent_coercion(true);
        let node = marked_yaml::parse_yaml_with_options(
            0,
            "a: [{id: 1, qty: \"3\", f: 1.5, b: true, n: null, s: '7'}]\n",
            opts,
        )
        .unwrap();
        let v = to_json(&node);
        assert_eq!(
            v,
            serde_json::json!({"a": [{"id": 1, "qty": "3", "f": 1.5, "b": true, "n": null, "s": "7"}]})
        );
    }
}
