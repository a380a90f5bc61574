//! Loads rendered YAML into `marked_yaml` nodes (every value keeps its `line:col`), with anchors,
//! aliases and merge keys (`<<: *base`), which Beam YAML (PyYAML's safe loader) accepts and
//! `marked_yaml`'s own loader refuses.
//!
//! Events come from `yaml_rust2`'s parser one at a time, into an explicit stack (its recursive
//! `load` would overflow the thread's stack on deep nesting). Bounded: nesting depth
//! ([`MAX_DEPTH`]) and the nodes aliases may add ([`MAX_ALIAS_NODES`], against "billion laughs"
//! files). An aliased value keeps the positions of its anchored definition, so a problem in it
//! is reported where it was written. Tags are refused, as before; only the first document is
//! read and a second one is an error (it used to be ignored).

use std::collections::HashMap;

use hashlink::LinkedHashMap;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{Marker, Node, Span};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

use super::diag::Pos;

/// Deepest nesting of mappings and lists accepted. The deepest file in `pipelines/` nests 9
/// levels (a JSON Schema inside a config); the bound keeps recursive walks over nodes (to JSON,
/// drop) far from the stack's limit.
pub const MAX_DEPTH: usize = 128;

/// Most nodes that aliases may add by copying their anchored values. A pipeline reusing a
/// schema a few times adds hundreds; a file whose aliases nest (each level doubling the last)
/// would otherwise grow exponentially.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// A problem in the YAML text, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

enum Frame {
    Mapping {
        start: Marker,
        map: LinkedHashMap<MarkedScalarNode, Node>,
        key: Option<MarkedScalarNode>,
        /// Values of `<<` keys: mappings merged in at the end (explicit keys win).
        merges: Vec<(Pos, Node)>,
        anchor: usize,
    },
    Sequence {
        start: Marker,
        items: Vec<Node>,
        anchor: usize,
    },
}

struct Loader {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    alias_nodes: usize,
    root: Option<Node>,
}

/// Parses the first (only) YAML document of `text`; its top level must be a mapping. Scalars
/// keep their quoting: plain ones may be typed, quoted ones stay strings.
///
/// # Errors
/// The first problem, with its position.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut loader = Loader {
        stack: Vec::new(),
        anchors: HashMap::new(),
        alias_nodes: 0,
        root: None,
    };
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            pos: pos(e.marker()),
            message: e.info().to_string(),
            hint: None,
        })?;
        let at = marker(&mark);
        match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(YamlError {
                        pos: pos(&mark),
                        message: "a second YAML document (`---`) in the pipeline file".into(),
                        hint: Some("a pipeline file holds one document; remove the `---` line and what follows, or move it to its own file".into()),
                    });
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                no_tag(tag.is_some(), &mark)?;
                let mut node = MarkedScalarNode::new(Span::new_start(at), value);
                node.set_coerce(matches!(style, TScalarStyle::Plain));
                loader.value(Node::from(node), anchor, &mark)?;
            }
            Event::Alias(id) => {
                let node = loader.anchors.get(&id).cloned().ok_or_else(|| YamlError {
                    pos: pos(&mark),
                    message: "an alias refers to an anchor that is not defined before it".into(),
                    hint: Some("define `&name` before using `*name`".into()),
                })?;
                loader.alias_nodes += count_nodes(&node);
                if loader.alias_nodes > MAX_ALIAS_NODES {
                    return Err(YamlError {
                        pos: pos(&mark),
                        message: format!("aliases expand to more than {MAX_ALIAS_NODES} values"),
                        hint: Some(
                            "aliases copy their anchored value; nested aliases multiply it".into(),
                        ),
                    });
                }
                loader.value(node, 0, &mark)?;
            }
            Event::MappingStart(anchor, tag) => {
                no_tag(tag.is_some(), &mark)?;
                loader.open(
                    Frame::Mapping {
                        start: at,
                        map: LinkedHashMap::new(),
                        key: None,
                        merges: Vec::new(),
                        anchor,
                    },
                    &mark,
                )?;
            }
            Event::SequenceStart(anchor, tag) => {
                no_tag(tag.is_some(), &mark)?;
                loader.open(
                    Frame::Sequence {
                        start: at,
                        items: Vec::new(),
                        anchor,
                    },
                    &mark,
                )?;
            }
            Event::MappingEnd | Event::SequenceEnd => loader.close(&mark)?,
        }
    }
    match loader.root {
        Some(root @ Node::Mapping(_)) => Ok(root),
        // An empty file: an empty mapping (the checks then report what is missing).
        None => Ok(Node::from(MarkedMappingNode::new_empty(Span::new_start(
            Marker::new(0, 0, 1, 1),
        )))),
        Some(other) => Err(YamlError {
            pos: super::yaml::pos_of(&other),
            message: "the top level of a pipeline file must be a mapping".into(),
            hint: Some("start the file with `pipeline:`".into()),
        }),
    }
}

impl Loader {
    fn open(&mut self, frame: Frame, mark: &yaml_rust2::scanner::Marker) -> Result<(), YamlError> {
        if let Some(Frame::Mapping { key: None, .. }) = self.stack.last() {
            return Err(YamlError {
                pos: pos(mark),
                message: "a mapping key must be a plain value, not a mapping or list".into(),
                hint: None,
            });
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError {
                pos: pos(mark),
                message: format!("the YAML nests deeper than {MAX_DEPTH} levels"),
                hint: None,
            });
        }
        self.stack.push(frame);
        Ok(())
    }

    fn close(&mut self, mark: &yaml_rust2::scanner::Marker) -> Result<(), YamlError> {
        let end = marker(mark);
        let (node, anchor) = match self.stack.pop() {
            Some(Frame::Mapping {
                start,
                mut map,
                merges,
                anchor,
                ..
            }) => {
                for (at, value) in merges {
                    merge_into(&mut map, value, at)?;
                }
                let span = Span::new_with_marks(start, end);
                (Node::from(MarkedMappingNode::new(span, map)), anchor)
            }
            Some(Frame::Sequence {
                start,
                items,
                anchor,
            }) => {
                let span = Span::new_with_marks(start, end);
                (Node::from(MarkedSequenceNode::new(span, items)), anchor)
            }
            None => {
                return Err(YamlError {
                    pos: pos(mark),
                    message: "unbalanced YAML structure".into(),
                    hint: None,
                });
            }
        };
        self.value(node, anchor, mark)
    }

    /// Places a finished value: as a key or value of the mapping being read, an item of the list,
    /// or the document's root.
    fn value(
        &mut self,
        node: Node,
        anchor: usize,
        mark: &yaml_rust2::scanner::Marker,
    ) -> Result<(), YamlError> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_some() {
                    return Err(YamlError {
                        pos: pos(mark),
                        message: "unexpected value after the document".into(),
                        hint: None,
                    });
                }
                self.root = Some(node);
            }
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping {
                map, key, merges, ..
            }) => match key.take() {
                None => match node {
                    Node::Scalar(s) => *key = Some(s),
                    _ => {
                        return Err(YamlError {
                            pos: pos(mark),
                            message: "a mapping key must be a plain value, not a mapping or list"
                                .into(),
                            hint: None,
                        });
                    }
                },
                Some(k) if k.as_str() == "<<" && k.may_coerce() => {
                    merges.push((Pos::from_span(k.span()), node));
                }
                Some(k) => {
                    if let Some((prev, _)) = map.get_key_value(&k) {
                        return Err(YamlError {
                            pos: Pos::from_span(k.span()),
                            message: format!(
                                "duplicate key `{}` (first at line {})",
                                k.as_str(),
                                Pos::from_span(prev.span()).line
                            ),
                            hint: Some("a key may appear once per mapping".into()),
                        });
                    }
                    map.insert(k, node);
                }
            },
        }
        Ok(())
    }
}

/// YAML's merge key: the entries of a mapping (or of each mapping of a list, earlier ones
/// first) that the mapping does not set itself.
fn merge_into(
    map: &mut LinkedHashMap<MarkedScalarNode, Node>,
    value: Node,
    at: Pos,
) -> Result<(), YamlError> {
    let sources = match value {
        Node::Mapping(m) => vec![m],
        Node::Sequence(s) => {
            let mut out = Vec::new();
            for item in s.iter() {
                match item {
                    Node::Mapping(m) => out.push(m.clone()),
                    _ => return Err(merge_error(at)),
                }
            }
            out
        }
        Node::Scalar(_) => return Err(merge_error(at)),
    };
    for m in sources {
        for (k, v) in m.iter() {
            if !map.contains_key(k) {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn merge_error(at: Pos) -> YamlError {
    YamlError {
        pos: at,
        message: "`<<` (merge key) needs a mapping or a list of mappings".into(),
        hint: Some("e.g. `<<: *defaults` where `defaults` anchors a mapping".into()),
    }
}

fn no_tag(tagged: bool, mark: &yaml_rust2::scanner::Marker) -> Result<(), YamlError> {
    if tagged {
        return Err(YamlError {
            pos: pos(mark),
            message: "YAML tags (`!name`) are not supported in pipeline files".into(),
            hint: Some("write the value without the tag".into()),
        });
    }
    Ok(())
}

fn count_nodes(node: &Node) -> usize {
    match node {
        Node::Scalar(_) => 1,
        Node::Sequence(s) => 1 + s.iter().map(count_nodes).sum::<usize>(),
        Node::Mapping(m) => 1 + m.iter().map(|(_, v)| 1 + count_nodes(v)).sum::<usize>(),
    }
}

fn marker(m: &yaml_rust2::scanner::Marker) -> Marker {
    Marker::new(0, m.index(), m.line(), m.col() + 1)
}

fn pos(m: &yaml_rust2::scanner::Marker) -> Pos {
    Pos {
        line: m.line().max(1),
        col: m.col() + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::to_json;

    #[test]
    fn anchors_aliases_and_merge_keys_resolve_with_positions() {
        let text = "\
a: &s {type: object, n: 1}
b: *s
c:
  <<: *s
  n: 2
";
        let root = parse(text).unwrap();
        assert_eq!(
            to_json(&root),
            serde_json::json!({
                "a": {"type": "object", "n": 1},
                "b": {"type": "object", "n": 1},
                "c": {"n": 2, "type": "object"},
            })
        );
        let b = root.as_mapping().unwrap().get_node("b").unwrap();
        assert_eq!(super::super::yaml::pos_of(b), Pos { line: 1, col: 7 });
    }

    #[test]
    fn nested_aliases_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("more than 100000"), "{}", err.message);
    }

    #[test]
    fn depth_duplicates_tags_and_second_documents_are_errors() {
        let deep = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(
            parse(&deep)
                .unwrap_err()
                .message
                .contains("deeper than 128")
        );
        let dup = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(dup.pos, Pos { line: 3, col: 1 });
        assert!(parse("a: !!str 1\n").unwrap_err().message.contains("tags"));
        let two = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(two.pos.line, 2);
    }
}
