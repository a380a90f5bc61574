//! `Create`: a bounded source of inline elements. Non-mapping elements become `{element: x}`
//! rows, as in Beam YAML.

use async_trait::async_trait;

use crate::pipeline::operator::{END_OF_TIME, EngineError, Source, SourceSink};
use crate::record::{Batch, json};

pub struct Create {
    name: String,
    elements: Vec<serde_json::Value>,
}

impl Create {
    pub fn new(name: &str, elements: &[serde_json::Value]) -> Self {
        let elements = elements
            .iter()
            .map(|e| match e {
                serde_json::Value::Object(_) => e.clone(),
                other => serde_json::json!({ "element": other }),
            })
            .collect();
        Create {
            name: name.to_string(),
            elements,
        }
    }
}

#[async_trait]
impl Source for Create {
    async fn run(&mut self, out: &mut dyn SourceSink) -> Result<(), EngineError> {
        if !self.elements.is_empty() {
            let rows = json::batch_from_values(&self.elements, None).map_err(|e| {
                EngineError::config(
                    &self.name,
                    format!("elements do not form rows of one schema: {e}"),
                )
            })?;
            out.emit(0, Batch::new(rows)).await?;
        }
        out.watermark(END_OF_TIME).await
    }
}
