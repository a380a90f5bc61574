//! `AssertEqual`: fails the run unless its input equals `elements` as a multiset.

use async_trait::async_trait;
use serde_json::Value;

use crate::pipeline::operator::{EngineError, Output, Receipts, Sink, Written};
use crate::record::{Batch, rows};

pub struct AssertEqual {
    pub name: String,
    pub expected: Vec<Value>,
    pub actual: Vec<Value>,
}

impl AssertEqual {
    pub fn new(name: &str, expected: Vec<Value>) -> Self {
        AssertEqual {
            name: name.to_string(),
            expected,
            actual: Vec::new(),
        }
    }
}

/// A readable description of a multiset difference, or `None` when equal.
pub fn describe_diff(expected: &[Value], actual: &[Value]) -> Option<String> {
    let (missing, unexpected) = rows::multiset_diff(expected, actual);
    if missing.is_empty() && unexpected.is_empty() {
        return None;
    }
    let mut msg = format!("expected {} rows, got {}", expected.len(), actual.len());
    for m in &missing {
        msg.push_str(&format!("\n    missing:    {m}"));
    }
    for u in &unexpected {
        msg.push_str(&format!("\n    unexpected: {u}"));
    }
    Some(msg)
}

#[async_trait]
impl Sink for AssertEqual {
    /// Rows are kept in memory for the comparison at the end: that is this sink's write.
    async fn write(
        &mut self,
        batch: Batch,
        _receipts: &mut Receipts,
        _out: &mut Output,
    ) -> Result<Written, EngineError> {
        self.actual.extend(
            rows::to_json_rows(&batch.rows)
                .into_iter()
                .map(Value::Object),
        );
        Ok(Written::Now)
    }

    async fn on_end(&mut self, _receipts: &mut Receipts) -> Result<(), EngineError> {
        match describe_diff(&self.expected, &self.actual) {
            None => Ok(()),
            Some(message) => Err(EngineError::Assertion {
                transform: self.name.clone(),
                message,
            }),
        }
    }
}
