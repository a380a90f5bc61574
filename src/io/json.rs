//! `ReadFromJson` / `WriteToJson`: JSON Lines files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::writer::{LineDelimited, Writer, WriterBuilder};
use async_trait::async_trait;

use super::files::{Emitter, FormatWriter, LineChunks, expand, read_blocking, report_bad_lines};
use super::sink::{FileSinkSpec, WriteFiles};
use crate::pipeline::operator::{EngineError, ErrorRoute, Output, Source, SourceSink, StageStats};
use crate::record::{Batch, json, schema};

/// Lines sampled from the first file to infer a schema when none is declared.
const INFER_SAMPLE: usize = 1000;

#[derive(Clone)]
pub struct ReadFromJson {
    name: String,
    pattern: String,
    declared: Option<serde_json::Value>,
    batch_size: usize,
    errors: ErrorRoute,
    error_ports: usize,
}

impl ReadFromJson {
    pub fn new(
        name: &str,
        pattern: &str,
        declared: Option<serde_json::Value>,
        batch_size: usize,
        errors: ErrorRoute,
        ports: usize,
    ) -> Self {
        ReadFromJson {
            name: name.to_string(),
            pattern: pattern.to_string(),
            declared,
            batch_size,
            errors,
            error_ports: ports,
        }
    }

    fn schema(&self, first: &std::path::Path) -> Result<SchemaRef, EngineError> {
        if let Some(s) = &self.declared {
            return schema::from_json_schema(s)
                .map_err(|e| EngineError::config(&self.name, format!("invalid `schema`: {e}")));
        }
        let mut chunks =
            LineChunks::open(first, INFER_SAMPLE).map_err(|e| io_err(&self.name, first, e))?;
        let sample = chunks
            .next_chunk()
            .map_err(|e| io_err(&self.name, first, e))?
            .unwrap_or_default();
        json::infer_schema(sample.split(|b| *b == b'\n'), INFER_SAMPLE).map_err(|e| {
            EngineError::config(
                &self.name,
                format!(
                    "cannot infer a schema from {}: {e}; declare `schema`",
                    first.display()
                ),
            )
        })
    }
}

fn io_err(name: &str, path: &std::path::Path, e: std::io::Error) -> EngineError {
    EngineError::external(name, format!("cannot read {}", path.display()), e)
}

impl ReadFromJson {
    /// Reads and decodes every file, sending each chunk's rows and error records; blocking.
    fn read(&self, emit: &mut Emitter) -> Result<(), EngineError> {
        let paths = expand(&self.name, &self.pattern)?;
        let schema = self.schema(&paths[0])?;
        let mut decoder = json::JsonDecoder::new(schema)
            .map_err(|e| EngineError::config(&self.name, e.to_string()))?;
        let mut out = Output::new(self.error_ports);
        for path in &paths {
            let mut chunks =
                LineChunks::open(path, self.batch_size).map_err(|e| io_err(&self.name, path, e))?;
            // Messages name the file's 1-based line.
            let mut first_line = 1;
            while let Some(chunk) = chunks
                .next_chunk()
                .map_err(|e| io_err(&self.name, path, e))?
            {
                let (rows, bad) = decoder.decode_lines(chunk);
                report_bad_lines(&self.errors, &mut out, path, first_line, bad);
                first_line += memchr::memchr_iter(b'\n', chunk).count();
                if let Some(rows) = rows {
                    out.main(Batch::new(rows));
                }
                if !emit.send(&mut out) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Source for ReadFromJson {
    async fn run(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        let this = self.clone();
        read_blocking(&self.name, sink, move |emit| this.read(emit)).await
    }
}

/// Writes JSON Lines with explicit nulls, keys in schema order.
struct JsonLines {
    writer: Writer<BufWriter<File>, LineDelimited>,
}

impl FormatWriter for JsonLines {
    fn write(&mut self, rows: &RecordBatch) -> Result<(), String> {
        self.writer.write(rows).map_err(|e| e.to_string())
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        let mut w = self.writer;
        w.finish().map_err(|e| e.to_string())?;
        let mut inner = w.into_inner();
        inner.flush().map_err(|e| e.to_string())?;
        inner.get_ref().sync_all().map_err(|e| e.to_string())
    }
}

/// `WriteToJson`: JSON Lines with explicit nulls, keys in schema order.
pub fn write_to_json(spec: &FileSinkSpec<'_>, stats: Arc<StageStats>) -> WriteFiles {
    let open = Arc::new(
        |w: BufWriter<File>| -> Result<Box<dyn FormatWriter>, String> {
            let writer = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(w);
            Ok(Box::new(JsonLines { writer }))
        },
    );
    WriteFiles::new(spec, open, stats)
}
