//! Where each value of a YAML document is: its field path (`listeners[0].bindPort`) and its
//! position, from the parser's events. serde-saphyr reports where an error is (line, column),
//! not which field; this index maps one to the other, both ways.
use serde_saphyr::{
    MessageFormatter as _, UserMessageFormatter,
    granit_parser::{Event, Parser},
};

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A 1-based line and column (characters), as serde-saphyr counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    pub(super) line: u64,
    pub(super) column: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NodeKind {
    Scalar,
    Sequence,
    Mapping,
}

/// A value in the document and its field path (`listeners[0].bindPort`).
#[derive(Debug)]
pub(super) struct Node {
    pub(super) path: String,
    /// Where its key is, for a mapping's value.
    pub(super) key: Option<Pos>,
    /// `path[..parent]` is the path of the mapping or sequence it is in.
    pub(super) parent: usize,
    /// Where the value starts (a block mapping starts at its first key).
    pub(super) value: Pos,
    pub(super) kind: NodeKind,
}

/// Which node an error position stands for.
#[derive(Clone, Copy)]
pub(super) enum Want {
    /// The field whose key is there (unknown or duplicate field).
    Key,
    /// The mapping that starts there (a field missing from it).
    Mapping,
    /// The value that starts there (wrong type or value).
    Value,
}

/// Every value of the document with its path and position, from the parser's events.
#[derive(Debug, Default)]
pub(super) struct PathIndex {
    pub(super) nodes: Vec<Node>,
    /// The document has a syntax error: the index stops there.
    pub(super) broken: bool,
}

/// Where the walk is inside a container.
pub(super) enum Frame {
    /// `key`: the key just read, whose value comes next; `None` while a key is expected.
    Mapping {
        path: String,
        key: Option<(String, Pos)>,
    },
    Sequence {
        path: String,
        next: usize,
    },
    /// Inside a mapping or sequence used as a key: no paths in there.
    Key {
        start: Pos,
    },
}

impl PathIndex {
    /// serde-saphyr's error as the field it is about (found from its position), where it is,
    /// and what is wrong.
    pub(super) fn explain(
        &self,
        error: &serde_saphyr::Error,
    ) -> (Option<String>, Option<Pos>, String) {
        let position = error.location().and_then(|l| {
            (l.line() > 0).then(|| Pos {
                line: l.line(),
                column: l.column(),
            })
        });
        let inner = innermost(error);
        let (field, message) = match inner {
            serde_saphyr::Error::SerdeUnknownField { expected, .. } => (
                position.and_then(|p| self.path_at(p, Want::Key)),
                if expected.is_empty() {
                    "unknown field: this mapping takes none".to_owned()
                } else {
                    format!("unknown field: expected one of {}", expected.join(", "))
                },
            ),
            serde_saphyr::Error::SerdeMissingField { field, .. } => (
                position
                    .and_then(|p| self.path_at(p, Want::Mapping))
                    .map(|mapping| join(&mapping, field)),
                "missing: this field is required".to_owned(),
            ),
            serde_saphyr::Error::DuplicateMappingKey { .. } => (
                position.and_then(|p| self.path_at(p, Want::Key)),
                "given twice in the same mapping".to_owned(),
            ),
            serde_saphyr::Error::Unexpected { expected, .. } => (
                position.and_then(|p| self.path_at(p, Want::Value)),
                match *expected {
                    "sequence start" => "expected a list".to_owned(),
                    "mapping start" => "expected a mapping".to_owned(),
                    // `[::]:8000` unquoted is a list: the likely slip.
                    "string scalar" => match position.and_then(|p| self.kind_at(p)) {
                        Some(NodeKind::Sequence) => "expected a single value, not a list \
                             (quote a value that starts with '[', e.g. '[::]:8000')"
                            .to_owned(),
                        _ => "expected a single value, not a list or a mapping".to_owned(),
                    },
                    other => format!("expected {other}"),
                },
            ),
            serde_saphyr::Error::NullIntoString { .. } => (
                position.and_then(|p| self.path_at(p, Want::Value)),
                "has no value".to_owned(),
            ),
            other => {
                let mut message = UserMessageFormatter.format_message(other).into_owned();
                // What `bindAddress: ::` (Gloo's '::' without its quotes) gives.
                if message.starts_with("mapping values are not allowed") {
                    message.push_str(" (a value such as '::' must be quoted)");
                }
                (position.and_then(|p| self.path_at(p, Want::Value)), message)
            }
        };
        (field, position, message)
    }

    pub(super) fn build(text: &str) -> Self {
        let mut index = PathIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Some(event) = parser.next_event() {
            let Ok((event, span)) = event else {
                index.broken = true;
                break;
            };
            let pos = Pos {
                line: span.start.line() as u64,
                column: span.start.col() as u64 + 1,
            };
            match event {
                // One document is all a config has; serde-saphyr rejects more.
                Event::DocumentEnd => break,
                Event::Scalar(text, ..) => {
                    index.enter(&stack, pos, NodeKind::Scalar);
                    finish(&mut stack, Some(&text), pos);
                }
                Event::Alias(_) => {
                    index.enter(&stack, pos, NodeKind::Scalar);
                    finish(&mut stack, None, pos);
                }
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    let kind = if matches!(event, Event::MappingStart(..)) {
                        NodeKind::Mapping
                    } else {
                        NodeKind::Sequence
                    };
                    let frame = match index.enter(&stack, pos, kind) {
                        None => Frame::Key { start: pos },
                        Some(path) if kind == NodeKind::Mapping => {
                            Frame::Mapping { path, key: None }
                        }
                        Some(path) => Frame::Sequence { path, next: 0 },
                    };
                    stack.push(frame);
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let start = match stack.pop() {
                        Some(Frame::Key { start }) => start,
                        _ => pos,
                    };
                    finish(&mut stack, None, start);
                }
                _ => {}
            }
        }
        index
    }

    /// Records a node starting at `pos`; its path, or `None` for a key (keys are not fields).
    pub(super) fn enter(&mut self, stack: &[Frame], pos: Pos, kind: NodeKind) -> Option<String> {
        let (path, key, parent) = match stack.last() {
            None => (String::new(), None, 0),
            Some(Frame::Mapping { key: None, .. } | Frame::Key { .. }) => return None,
            Some(Frame::Mapping {
                path,
                key: Some((name, at)),
            }) => (join(path, name), Some(*at), path.len()),
            Some(Frame::Sequence { path, next }) => (format!("{path}[{next}]"), None, path.len()),
        };
        self.nodes.push(Node {
            path: path.clone(),
            key,
            parent,
            value: pos,
            kind,
        });
        Some(path)
    }

    /// Where to point for an error about `path`: at a scalar itself, at a container's key
    /// (its value may start lines below).
    pub(super) fn position_of(&self, path: &str) -> Option<Pos> {
        let node = self.nodes.iter().find(|n| n.path == path)?;
        Some(match node.kind {
            NodeKind::Scalar => node.value,
            _ => node.key.unwrap_or(node.value),
        })
    }

    /// What the innermost node starting at `pos` is.
    pub(super) fn kind_at(&self, pos: Pos) -> Option<NodeKind> {
        self.nodes.iter().rfind(|n| n.value == pos).map(|n| n.kind)
    }

    /// The path of the node an error at `pos` is about.
    pub(super) fn path_at(&self, pos: Pos, want: Want) -> Option<String> {
        let path = match want {
            Want::Key => self
                .nodes
                .iter()
                .find(|n| n.key == Some(pos))
                .map(|n| n.path.clone()),
            // A block mapping starts at its first key, a flow mapping at its `{` (serde-saphyr
            // then points at the first key). Nodes are in document order: the last mapping
            // starting here is the innermost.
            Want::Mapping => self
                .nodes
                .iter()
                .rfind(|n| n.kind == NodeKind::Mapping && n.value == pos)
                .map(|n| n.path.clone())
                .or_else(|| {
                    let first_key = self.nodes.iter().find(|n| n.key == Some(pos))?;
                    Some(first_key.path[..first_key.parent].to_owned())
                }),
            Want::Value => self
                .nodes
                .iter()
                .rfind(|n| n.value == pos)
                .or_else(|| self.nodes.iter().find(|n| n.key == Some(pos)))
                // A syntax error is between nodes: the last field started on its line
                // before it is what the broken text belongs to.
                .or_else(|| {
                    self.nodes.iter().rfind(|n| {
                        let start = n.key.unwrap_or(n.value);
                        start.line == pos.line && start <= pos
                    })
                })
                .map(|n| n.path.clone()),
        };
        // The document itself is no field.
        path.filter(|path| !path.is_empty())
    }
}

/// A node ended: the mapping or sequence around it moves on.
pub(super) fn finish(stack: &mut [Frame], key_text: Option<&str>, start: Pos) {
    match stack.last_mut() {
        Some(Frame::Mapping { key, .. }) => {
            *key = match key.take() {
                None => Some((key_text.unwrap_or("?").to_owned(), start)),
                Some(_) => None,
            }
        }
        Some(Frame::Sequence { next, .. }) => *next += 1,
        Some(Frame::Key { .. }) | None => {}
    }
}

/// The error serde-saphyr's wrappers (source snippet, alias) carry.
pub(super) fn innermost(error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match error.without_snippet() {
        serde_saphyr::Error::AliasError { error, .. } => innermost(error),
        other => other,
    }
}
