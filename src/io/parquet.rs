//! `ReadFromParquet` / `WriteToParquet`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::Arc;

use arrow::array::RecordBatch;
use async_trait::async_trait;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::files::{Emitter, FormatWriter, expand, read_blocking};
use super::sink::{FileSinkSpec, WriteFiles};
use crate::pipeline::operator::{EngineError, Output, Source, SourceSink, StageStats};
use crate::record::Batch;

#[derive(Clone)]
pub struct ReadFromParquet {
    pub name: String,
    pub pattern: String,
    pub batch_size: usize,
}

#[async_trait]
impl Source for ReadFromParquet {
    async fn run(&mut self, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
        let this = self.clone();
        read_blocking(&self.name, sink, move |emit| this.read(emit)).await
    }
}

impl ReadFromParquet {
    /// Reads every file's row groups as batches, sending each; blocking.
    fn read(&self, emit: &mut Emitter) -> Result<(), EngineError> {
        let mut out = Output::new(1);
        for path in expand(&self.name, &self.pattern)? {
            let ext = |e: &dyn std::fmt::Display| EngineError::External {
                transform: self.name.clone(),
                message: format!("cannot read {}: {e}", path.display()),
                source: None,
            };
            let file = File::open(&path).map_err(|e| ext(&e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| ext(&e))?
                .with_batch_size(self.batch_size)
                .build()
                .map_err(|e| ext(&e))?;
            for rows in reader {
                out.main(Batch::new(rows.map_err(|e| ext(&e))?));
                if !emit.send(&mut out) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

struct ParquetFile {
    writer: Option<(arrow::datatypes::SchemaRef, ArrowWriter<BufWriter<File>>)>,
    out: Option<BufWriter<File>>,
}

impl FormatWriter for ParquetFile {
    fn write(&mut self, rows: &RecordBatch) -> Result<(), String> {
        if self.writer.is_none() {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            let out = self.out.take().expect("writer is created once");
            let w =
                ArrowWriter::try_new(out, rows.schema(), Some(props)).map_err(|e| e.to_string())?;
            self.writer = Some((rows.schema(), w));
        }
        let (schema, w) = self.writer.as_mut().expect("created above");
        if schema != &rows.schema() {
            return Err(format!(
                "a batch's schema differs from the file's: {:?} vs {:?}",
                rows.schema().fields(),
                schema.fields()
            ));
        }
        w.write(rows).map_err(|e| e.to_string())
    }

    fn finish(self: Box<Self>) -> Result<(), String> {
        match (self.writer, self.out) {
            (Some((_, w)), _) => {
                let mut inner = w.into_inner().map_err(|e| e.to_string())?;
                inner.flush().map_err(|e| e.to_string())?;
                inner.get_ref().sync_all().map_err(|e| e.to_string())
            }
            // No rows: an empty Parquet file with no columns.
            (None, Some(out)) => {
                let schema = Arc::new(arrow::datatypes::Schema::empty());
                let w = ArrowWriter::try_new(out, schema, None).map_err(|e| e.to_string())?;
                w.close().map(|_| ()).map_err(|e| e.to_string())
            }
            (None, None) => Ok(()),
        }
    }
}

/// `WriteToParquet`: zstd-compressed Parquet, the schema of the first batch.
pub fn write_to_parquet(spec: &FileSinkSpec<'_>, stats: Arc<StageStats>) -> WriteFiles {
    let open = Arc::new(
        |w: BufWriter<File>| -> Result<Box<dyn FormatWriter>, String> {
            Ok(Box::new(ParquetFile {
                writer: None,
                out: Some(w),
            }))
        },
    );
    WriteFiles::new(spec, open, stats)
}
