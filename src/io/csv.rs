//! `ReadFromCsv` / `WriteToCsv`: CSV files with a header row.
//!
//! Records are read in chunks of whole lines, so a quoted field may not contain a newline. A
//! line that cannot be a row (ragged, a value that does not parse, a float that overflows) is an
//! error record naming its line in the file (`path:line: message`); the rest is written.

use std::fs::File;
use std::io::{BufWriter, Cursor, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::csv::reader::{Format, ReaderBuilder};
use arrow::csv::writer::{Writer, WriterBuilder};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;

use super::files::{Emitter, FormatWriter, LineChunks, expand, read_blocking, report_bad_lines};
use super::sink::{FileSinkSpec, WriteFiles};
use crate::pipeline::operator::{EngineError, ErrorRoute, Output, Source, SourceSink, StageStats};
use crate::record::json::BadRecord;
use crate::record::{Batch, numbers, schema};

const INFER_SAMPLE: usize = 1000;

#[derive(Clone)]
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
        // Ragged rows are allowed while inferring (extra fields ignored, missing ones not
        // voted): one bad row must not fail the run; decoding sends it to the error output.
        let (schema, _) = self
            .format()
            .with_truncated_rows(true)
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

    fn decoder(&self, schema: &SchemaRef) -> CsvDecoder {
        CsvDecoder {
            schema: schema.clone(),
            format: self.format().with_header(false),
            batch_size: self.batch_size,
        }
    }
}

/// Decodes chunks of CSV lines (no header) into batches of one schema, isolating bad lines.
pub struct CsvDecoder {
    pub schema: SchemaRef,
    /// The CSV dialect, without a header.
    pub format: Format,
    pub batch_size: usize,
}

impl CsvDecoder {
    /// A comma-separated decoder for `schema` (tests and fuzzing).
    pub fn new(schema: SchemaRef) -> Self {
        CsvDecoder {
            schema,
            format: Format::default().with_header(false),
            batch_size: 1024,
        }
    }

    /// Decodes `chunk`, a run of whole lines; blank lines are skipped.
    ///
    /// Guarantee: every non-blank line is one row (in order) or one [`BadRecord`] whose `line`
    /// is its 0-based index in `chunk`: a ragged row, a value that does not parse as its
    /// column's type, or a float that is not finite (`1e400`). The whole chunk is decoded at
    /// once; only a failing chunk is decoded line by line.
    pub fn decode_lines(&self, chunk: &[u8]) -> (Option<RecordBatch>, Vec<BadRecord>) {
        // Not one row per line (a quoted newline) counts as a failure too.
        if let Ok(batch) = self.read(chunk)
            && batch.as_ref().map_or(0, |b| b.num_rows()) == crate::record::json::count_lines(chunk)
            && plain_lines(chunk, self.format_quote())
        {
            return (batch, Vec::new());
        }
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for (index, line) in chunk.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let one = match self.read(line) {
                Ok(Some(b)) if b.num_rows() == 1 => Ok(b),
                // A lone `\r` ends a record too; a BOM alone is no record.
                Ok(b) => Err(format!(
                    "expected one CSV record on the line, found {}",
                    b.map_or(0, |b| b.num_rows())
                )),
                Err(e) => Err(e),
            };
            match one {
                Ok(b) => good.push(b),
                Err(e) => bad.push(BadRecord {
                    line: index,
                    payload: line.trim_ascii_end().to_vec(),
                    error: e,
                }),
            }
        }
        match arrow::compute::concat_batches(&self.schema, &good) {
            Ok(b) if b.num_rows() > 0 => (Some(b), bad),
            Ok(_) => (None, bad),
            Err(e) => {
                // Batches of one schema always concatenate; keep the data if they do not.
                let error = format!("internal error: {e}");
                let bad = chunk
                    .split(|b| *b == b'\n')
                    .enumerate()
                    .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
                    .map(|(line, l)| BadRecord {
                        line,
                        payload: l.trim_ascii_end().to_vec(),
                        error: error.clone(),
                    })
                    .collect();
                (None, bad)
            }
        }
    }

    /// The quote byte of the dialect (`Format` keeps it private; Sluice sets none but `"`).
    fn format_quote(&self) -> u8 {
        b'"'
    }

    fn read(&self, bytes: &[u8]) -> Result<Option<RecordBatch>, String> {
        let batches = ReaderBuilder::new(self.schema.clone())
            .with_format(self.format.clone())
            .with_batch_size(self.batch_size.max(1))
            .build(Cursor::new(bytes))
            .map_err(|e| clean_error(&e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| clean_error(&e.to_string()))?;
        let batch = match batches.len() {
            0 => return Ok(None),
            1 => batches.into_iter().next().expect("one batch"),
            _ => {
                arrow::compute::concat_batches(&self.schema, &batches).map_err(|e| e.to_string())?
            }
        };
        numbers::check_floats(&batch).map_err(|e| e.to_string())?;
        Ok(Some(batch))
    }
}

/// Whether no line can hold other than one record: an even number of quotes on every line (no
/// quoted newline) and no `\r` but before a `\n` (a lone `\r` ends a record). With the row
/// count equal to the line count, rows then map to lines one to one.
fn plain_lines(chunk: &[u8], quote: u8) -> bool {
    let mut quotes = 0usize;
    for i in memchr::memchr3_iter(quote, b'\n', b'\r', chunk) {
        match chunk[i] {
            b'\n' if !quotes.is_multiple_of(2) => return false,
            b'\n' => quotes = 0,
            b'\r' if chunk.get(i + 1).is_some_and(|b| *b != b'\n') => return false,
            b'\r' => {}
            _ => quotes += 1,
        }
    }
    quotes.is_multiple_of(2)
}

/// arrow-csv's message without its line numbers, which count from the start of whatever it
/// was given (a chunk or one line), not from the file: the caller adds the file's line.
fn clean_error(msg: &str) -> String {
    let msg = msg
        .strip_prefix("Csv error: ")
        .or_else(|| msg.strip_prefix("Parser error: "))
        .unwrap_or(msg);
    if let Some(rest) = msg.strip_prefix("incorrect number of fields for line ") {
        // "incorrect number of fields for line 1, expected 3 got 2" (or "got more than 3").
        if let Some((_, counts)) = rest.split_once(", expected ")
            && let Some((expected, got)) = counts.split_once(" got ")
        {
            return format!("expected {expected} fields, got {got}");
        }
    }
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        rest = rest[at + " at line ".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[async_trait]
impl Source for ReadFromCsv {
    async fn run(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        let this = self.clone();
        read_blocking(&self.name, sink, move |emit| this.read(emit)).await
    }
}

impl ReadFromCsv {
    /// Reads and decodes every file, sending each chunk's rows and error records; blocking.
    fn read(&self, emit: &mut Emitter) -> Result<(), EngineError> {
        let paths = expand(&self.name, &self.pattern)?;
        let schema = self.schema(&paths[0])?;
        let decoder = self.decoder(&schema);
        let mut out = Output::new(self.ports);
        for path in &paths {
            // Line numbers in messages are the file's, 1-based: the header is line 1.
            let mut first_line = 2;
            let mut chunks = LineChunks::open(path, self.batch_size).map_err(|e| {
                EngineError::external(&self.name, format!("cannot read {}", path.display()), e)
            })?;
            let mut header = true;
            while let Some(chunk) = chunks.next_chunk().map_err(|e| {
                EngineError::external(&self.name, format!("cannot read {}", path.display()), e)
            })? {
                let mut chunk = chunk;
                if header {
                    header = false;
                    let end = memchr::memchr(b'\n', chunk).map_or(chunk.len(), |i| i + 1);
                    chunk = &chunk[end..];
                }
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
