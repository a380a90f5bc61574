//! `ReadFromCsv` / `WriteToCsv`: CSV files with a header row.
//!
//! Records are read in chunks of whole lines, so a quoted field may not contain a newline.

use std::fs::File;
use std::io::{BufWriter, Cursor, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::csv::reader::{Format, ReaderBuilder};
use arrow::csv::writer::{Writer, WriterBuilder};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;

use super::files::{FormatWriter, LineChunks, expand, forward};
use super::sink::{FileSinkSpec, WriteFiles};
use crate::pipeline::operator::Element;
use crate::pipeline::operator::{
    END_OF_TIME, EngineError, ErrorRoute, Output, Source, SourceSink, StageStats,
};
use crate::record::{Batch, schema};

const INFER_SAMPLE: usize = 1000;

pub struct ReadFromCsv {
    pub name: String,
    pub pattern: String,
    pub delimiter: u8,
    pub declared: Option<serde_json::Value>,
    pub batch_size: usize,
    pub errors: ErrorRoute,
    pub ports: usize,
}

impl ReadFromCsv {
    fn format(&self) -> Format {
        Format::default()
            .with_header(true)
            .with_delimiter(self.delimiter)
    }

    fn schema(&self, path: &Path) -> Result<SchemaRef, EngineError> {
        if let Some(s) = &self.declared {
            return schema::from_json_schema(s)
                .map_err(|e| EngineError::config(&self.name, format!("invalid `schema`: {e}")));
        }
        let file = File::open(path).map_err(|e| {
            EngineError::external(&self.name, format!("cannot read {}", path.display()), e)
        })?;
        let (schema, _) = self
            .format()
            .infer_schema(std::io::BufReader::new(file), Some(INFER_SAMPLE))
            .map_err(|e| {
                EngineError::config(
                    &self.name,
                    format!("cannot infer a schema from {}: {e}", path.display()),
                )
            })?;
        // Keep date and time text as written (as Beam's reader does); AssignTimestamps parses it.
        let fields: Vec<arrow::datatypes::Field> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(..)
                | DataType::Date32
                | DataType::Date64
                | DataType::Time32(_)
                | DataType::Time64(_) => f.as_ref().clone().with_data_type(DataType::Utf8),
                _ => f.as_ref().clone(),
            })
            .collect();
        Ok(Arc::new(arrow::datatypes::Schema::new(fields)))
    }

    /// Decodes `chunk`; on failure decodes line by line to isolate the bad records.
    fn decode(
        &self,
        schema: &SchemaRef,
        chunk: &[u8],
        path: &Path,
        out: &mut Output,
    ) -> Result<Option<RecordBatch>, EngineError> {
        let read = |bytes: &[u8]| -> Result<Vec<RecordBatch>, String> {
            ReaderBuilder::new(schema.clone())
                .with_format(self.format().with_header(false))
                .with_batch_size(self.batch_size)
                .build(Cursor::new(bytes))
                .map_err(|e| e.to_string())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        };
        let concat = |batches: Vec<RecordBatch>| {
            arrow::compute::concat_batches(schema, &batches)
                .map_err(|e| EngineError::internal(&self.name, e.to_string()))
        };
        if let Ok(batches) = read(chunk) {
            return concat(batches).map(Some);
        }
        let mut good = Vec::new();
        let mut failures = Vec::new();
        for line in chunk
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        {
            match read(line) {
                Ok(b) => good.extend(b),
                Err(e) => failures.push((
                    Element::from_bytes(line.trim_ascii_end()),
                    format!("{}: {e}", path.display()),
                )),
            }
        }
        self.errors.report_elements(
            out,
            &Batch::new(RecordBatch::new_empty(ErrorRoute::schema())),
            failures,
        );
        concat(good).map(Some)
    }
}

#[async_trait]
impl Source for ReadFromCsv {
    async fn run(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        let paths = expand(&self.name, &self.pattern)?;
        let schema = self.schema(&paths[0])?;
        let mut out = Output::new(self.ports);
        for path in &paths {
            let mut chunks = LineChunks::open(path, self.batch_size).map_err(|e| {
                EngineError::external(&self.name, format!("cannot read {}", path.display()), e)
            })?;
            let mut header = true;
            while let Some(chunk) = chunks.next_chunk().map_err(|e| {
                EngineError::external(&self.name, format!("cannot read {}", path.display()), e)
            })? {
                if sink.stopping() {
                    return Ok(());
                }
                let mut chunk = chunk;
                if header {
                    header = false;
                    let end = memchr::memchr(b'\n', chunk).map_or(chunk.len(), |i| i + 1);
                    chunk = &chunk[end..];
                }
                if let Some(rows) = self.decode(&schema, chunk, path, &mut out)? {
                    out.main(Batch::new(rows));
                }
                forward(&mut out, sink).await?;
            }
        }
        sink.watermark(END_OF_TIME).await
    }
}

struct CsvFile {
    writer: Writer<BufWriter<File>>,
}

impl FormatWriter for CsvFile {
    fn write(&mut self, rows: &RecordBatch) -> Result<(), String> {
        self.writer.write(rows).map_err(|e| e.to_string())
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        let mut inner = self.writer.into_inner();
        inner.flush().map_err(|e| e.to_string())?;
        inner.get_ref().sync_all().map_err(|e| e.to_string())
    }
}

/// `WriteToCsv`: a header row, then the rows with `delimiter`.
pub fn write_to_csv(spec: &FileSinkSpec<'_>, delimiter: u8, stats: Arc<StageStats>) -> WriteFiles {
    let open = Arc::new(
        move |w: BufWriter<File>| -> Result<Box<dyn FormatWriter>, String> {
            let writer = WriterBuilder::new()
                .with_header(true)
                .with_delimiter(delimiter)
                .build(w);
            Ok(Box::new(CsvFile { writer }))
        },
    );
    WriteFiles::new(spec, open, stats)
}
