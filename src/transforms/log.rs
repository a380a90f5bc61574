//! `LogForTesting`: logs every row as JSON and passes its input on.

use async_trait::async_trait;

use crate::pipeline::operator::{EngineError, Operator, Output};
use crate::record::{Batch, rows};

pub struct LogForTesting {
    pub name: String,
    pub prefix: String,
    pub level: tracing::Level,
}

impl LogForTesting {
    pub fn level(name: &str) -> tracing::Level {
        match name.to_ascii_uppercase().as_str() {
            "DEBUG" => tracing::Level::DEBUG,
            "WARNING" | "WARN" => tracing::Level::WARN,
            "ERROR" | "CRITICAL" => tracing::Level::ERROR,
            _ => tracing::Level::INFO,
        }
    }
}

#[async_trait]
impl Operator for LogForTesting {
    async fn process(
        &mut self,
        _input: usize,
        batch: Batch,
        out: &mut Output,
    ) -> Result<(), EngineError> {
        for row in rows::to_json_rows(&batch.rows) {
            let row = serde_json::Value::Object(row);
            match self.level {
                tracing::Level::DEBUG => {
                    tracing::debug!(transform = %self.name, "{}{}", self.prefix, row)
                }
                tracing::Level::WARN => {
                    tracing::warn!(transform = %self.name, "{}{}", self.prefix, row)
                }
                tracing::Level::ERROR => {
                    tracing::error!(transform = %self.name, "{}{}", self.prefix, row)
                }
                _ => tracing::info!(transform = %self.name, "{}{}", self.prefix, row),
            }
        }
        out.main(batch);
        Ok(())
    }
}
