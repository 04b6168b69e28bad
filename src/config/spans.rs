//! Source positions for YAML documents, so that every configuration and
//! policy mistake can be reported as `FILE:LINE:COL: message`.
//!
//! serde_yaml tells where a *syntax* or *shape* error is, but once a value has
//! been deserialized its position is gone. This module walks the same text
//! once with a marked event parser and records where each node starts, keyed
//! by a path such as `rules[3].match.path`. It never interprets values.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A position in a source file, 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// A problem found in a file, printed as `FILE:LINE:COL: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.pos.line, self.pos.col, self.message
        )
    }
}

/// Positions of the nodes of one YAML document.
#[derive(Debug, Default)]
pub struct Spans {
    file: String,
    nodes: HashMap<String, Pos>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

struct Walker {
    stack: Vec<Frame>,
    nodes: HashMap<String, Pos>,
}

impl Walker {
    /// The path of the node that the next value event starts, or None when the
    /// next scalar is a mapping key.
    fn next_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| {
                if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }
            }),
        }
    }

    fn pos(mark: Marker) -> Pos {
        Pos {
            line: mark.line().max(1),
            col: mark.col() + 1,
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => match self.next_path() {
                Some(path) => {
                    self.nodes.entry(path).or_insert(Self::pos(mark));
                }
                None => {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        // A block mapping's start mark lies after its first
                        // key; the key's own mark is where the mapping begins.
                        let here = Self::pos(mark);
                        if let Some(p) = self.nodes.get_mut(path.as_str()) {
                            if (here.line, here.col) < (p.line, p.col) {
                                *p = here;
                            }
                        }
                        *key = Some(value);
                    }
                }
            },
            Event::Alias(_) => {
                if let Some(path) = self.next_path() {
                    self.nodes.entry(path).or_insert(Self::pos(mark));
                }
            }
            Event::MappingStart(..) => {
                let path = self.next_path().unwrap_or_default();
                self.nodes.entry(path.clone()).or_insert(Self::pos(mark));
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.next_path().unwrap_or_default();
                self.nodes.entry(path.clone()).or_insert(Self::pos(mark));
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl Spans {
    /// Index the nodes of `text`. A document that does not parse yields an
    /// empty index: serde_yaml reports that error with its own position.
    pub fn index(file: &str, text: &str) -> Spans {
        let mut walker = Walker {
            stack: Vec::new(),
            nodes: HashMap::new(),
        };
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut walker, false);
        Spans {
            file: file.to_string(),
            nodes: walker.nodes,
        }
    }

    /// Where the node at `path` starts; walks up to the nearest known parent.
    pub fn pos(&self, path: &str) -> Pos {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.nodes.get(&p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => {
                    return self
                        .nodes
                        .get("")
                        .copied()
                        .unwrap_or(Pos { line: 1, col: 1 })
                }
            }
        }
    }

    pub fn diag(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            pos: self.pos(path),
            message: message.into(),
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }
}

/// Positions of every scalar with its text, in document order.
struct Scalars(Vec<(Pos, String)>);

impl MarkedEventReceiver for Scalars {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if let Event::Scalar(v, ..) = ev {
            self.0.push((Walker::pos(mark), v));
        }
    }
}

/// Turn a serde_yaml error into a diagnostic. For a value that failed to
/// convert (a bad duration, say), serde_yaml points at the start of the
/// enclosing mapping; when the message quotes the value, point at the value.
pub fn serde_diag_in(file: &str, text: &str, err: &serde_yaml::Error) -> Diagnostic {
    point_at_quoted(text, serde_diag(file, err))
}

/// A part of a document (the node at `path`) that failed to convert on its
/// own (`serde_yaml::from_value`, which knows no positions): the problem is
/// placed at that node, or at the value it quotes when that comes after it.
pub fn value_diag(spans: &Spans, text: &str, path: &str, err: &serde_yaml::Error) -> Diagnostic {
    let mut d = spans.diag(path, format!("{path}: {err}"));
    // From the start of the node's line, so a mapping's own key is found.
    let at = d.pos;
    d.pos.col = 1;
    let mut d = point_at_quoted(text, d);
    if d.pos.col == 1 && d.pos.line == at.line {
        d.pos = at;
    }
    d
}

/// When the message quotes a value (`5x`, an unknown field's name), move the
/// position to the first scalar with that text at or after it.
fn point_at_quoted(text: &str, mut d: Diagnostic) -> Diagnostic {
    let quoted = d.message.split('`').nth(1).map(str::to_string);
    if let Some(q) = quoted.filter(|q| !q.is_empty()) {
        let mut s = Scalars(Vec::new());
        let _ = Parser::new_from_str(text).load(&mut s, false);
        if let Some((pos, _)) =
            s.0.iter()
                .find(|(p, v)| *v == q && (p.line, p.col) >= (d.pos.line, d.pos.col))
        {
            d.pos = *pos;
        }
    }
    d
}

/// Turn a serde_yaml error into a diagnostic with the position it carries.
pub fn serde_diag(file: &str, err: &serde_yaml::Error) -> Diagnostic {
    let pos = err
        .location()
        .map(|l| Pos {
            line: l.line(),
            col: l.column(),
        })
        .unwrap_or(Pos { line: 1, col: 1 });
    // serde_yaml appends " at line L column C"; the prefix already says it.
    let mut message = err.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    Diagnostic {
        file: file.to_string(),
        pos,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_values_and_sequence_items() {
        let text =
            "default: deny\nrules:\n  - name: a\n    match:\n      path: \"/x/**\"\n  - name: b\n";
        let s = Spans::index("p.yaml", text);
        assert_eq!(s.pos("default"), Pos { line: 1, col: 10 });
        assert_eq!(s.pos("rules[0].match.path"), Pos { line: 5, col: 13 });
        assert_eq!(s.pos("rules[1].name"), Pos { line: 6, col: 11 });
        // unknown child falls back to the parent
        assert_eq!(s.pos("rules[1].match"), Pos { line: 6, col: 5 });
        assert_eq!(s.pos("rules[0]"), Pos { line: 3, col: 5 });
    }
}
