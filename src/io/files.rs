//! What file connectors share: glob expansion, line-chunked reading, and sharded output files
//! that appear atomically (written to a temporary name, renamed when complete).

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

use crate::pipeline::operator::{END_OF_TIME, EngineError, ErrorRoute, Output, SourceSink};
use crate::pipeline::stats::SinkStats;
use crate::record::Batch;

/// Files matching `pattern` (a path or a glob), sorted.
///
/// # Errors
/// When the pattern is invalid or matches nothing.
pub fn expand(transform: &str, pattern: &str) -> Result<Vec<PathBuf>, EngineError> {
    let paths: Vec<PathBuf> = glob::glob(pattern)
        .map_err(|e| {
            EngineError::config(transform, format!("invalid path pattern `{pattern}`: {e}"))
        })?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    if paths.is_empty() {
        return Err(EngineError::config(
            transform,
            format!("no file matches `{pattern}`"),
        ));
    }
    Ok(paths)
}

/// Reads a file in chunks of whole lines, about `lines` lines each.
pub struct LineChunks {
    file: File,
    /// Read buffer: `buf[start..end]` is read and not yet returned. Zeroed once, when allocated
    /// or grown, never per read.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    lines: usize,
}

/// Bytes read per `read` call; large enough to amortise syscalls, small enough to bound memory.
const READ_SIZE: usize = 4 << 20;

impl LineChunks {
    pub fn open(path: &Path, lines: usize) -> std::io::Result<Self> {
        Ok(LineChunks {
            file: File::open(path)?,
            buf: vec![0; READ_SIZE * 2],
            start: 0,
            end: 0,
            eof: false,
            lines: lines.max(1),
        })
    }

    /// The next chunk of complete lines (the last may lack its newline), or `None` at the end.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<&[u8]>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(end) = memchr::memchr_iter(b'\n', pending).nth(self.lines - 1) {
                let chunk_start = self.start;
                self.start += end + 1;
                return Ok(Some(&self.buf[chunk_start..self.start]));
            }
            if self.eof {
                if pending.is_empty() {
                    return Ok(None);
                }
                let chunk_start = self.start;
                self.start = self.end;
                return Ok(Some(&self.buf[chunk_start..self.end]));
            }
            if self.buf.len() - self.end < READ_SIZE {
                // Move the unread tail to the front; grow when it fills half the buffer (a
                // chunk of very long lines).
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() - self.end < READ_SIZE {
                    self.buf.resize(self.end + READ_SIZE * 2, 0);
                }
            }
            let n = self.file.read(&mut self.buf[self.end..])?;
            self.end += n;
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

/// Sends what a source's `Output` collected (main rows and error records) downstream.
pub async fn forward(out: &mut Output, sink: &mut dyn SourceSink) -> Result<(), EngineError> {
    let batches: Vec<(usize, Batch)> = out.drain().collect();
    for (port, batch) in batches {
        sink.emit(port, batch).await?;
    }
    Ok(())
}

/// How many emits a file source's reading thread may run ahead of the pipeline: enough to
/// overlap reading and decoding with downstream work, few enough that memory stays a couple of
/// batches (each `batch_size` rows).
const READ_AHEAD: usize = 2;

/// The reading side of [`read_blocking`]: hands what a source's [`Output`] collected to the
/// async task that emits it.
pub struct Emitter {
    tx: tokio::sync::mpsc::Sender<Vec<(usize, Batch)>>,
}

impl Emitter {
    /// Sends the rows and error records collected in `out` (waiting while the pipeline is
    /// behind). False once the source stopped or failed downstream: read no more and return.
    pub fn send(&mut self, out: &mut Output) -> bool {
        let batches: Vec<(usize, Batch)> = out.drain().collect();
        batches.is_empty() || self.tx.blocking_send(batches).is_ok()
    }
}

/// Runs a file source's blocking work (globbing, opening, reading and decoding files) on tokio's
/// blocking pool and emits what it sends from the source's async task, so no executor thread
/// waits on the disk. `read` returns when [`Emitter::send`] says the source stopped. Once the
/// input was read to its end, the end-of-input watermark follows; a stopped source sends none.
///
/// # Errors
/// What `read` returned, a failed emit, or an internal error if `read` panicked.
pub async fn read_blocking<F>(
    transform: &str,
    sink: &mut dyn SourceSink,
    read: F,
) -> Result<(), EngineError>
where
    F: FnOnce(&mut Emitter) -> Result<(), EngineError> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let reader = tokio::task::spawn_blocking(move || read(&mut Emitter { tx }));
    while let Some(batches) = rx.recv().await {
        if sink.stopping() {
            // The reader's next send fails and it returns.
            drop(rx);
            let _ = reader.await;
            return Ok(());
        }
        for (port, batch) in batches {
            sink.emit(port, batch).await?;
        }
    }
    reader
        .await
        .map_err(|e| EngineError::internal(transform, format!("reading files failed: {e}")))??;
    sink.watermark(END_OF_TIME).await
}

/// Reports undecodable lines of a file source as `path:line: message`, where `first_line` is the
/// file's 1-based line number of the chunk's first line.
pub fn report_bad_lines(
    errors: &ErrorRoute,
    out: &mut Output,
    path: &Path,
    first_line: usize,
    bad: Vec<crate::record::json::BadRecord>,
) {
    let failures = bad
        .into_iter()
        .map(|b| {
            let msg = format!("{}:{}: {}", path.display(), first_line + b.line, b.error);
            (b.element(), msg)
        })
        .collect();
    errors.report_elements(
        out,
        &Batch::new(arrow::array::RecordBatch::new_empty(ErrorRoute::schema())),
        failures,
    );
}

/// A format that writes batches to one file.
pub trait FormatWriter: Send {
    fn write(&mut self, rows: &RecordBatch) -> Result<(), String>;
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// Opens a format writer on a file. Shared by every file set a streaming sink opens.
pub type OpenWriter =
    dyn Fn(BufWriter<File>) -> Result<Box<dyn FormatWriter>, String> + Send + Sync;

/// What committing a file set produced: the paths now visible and the acknowledgement holds of
/// the rows in them, which the sink hands back to the runner as delivered.
#[must_use = "the holds must be handed back after the commit"]
pub struct Committed {
    pub paths: Vec<PathBuf>,
    pub holds: crate::record::AckSet,
}

impl Committed {
    pub fn empty() -> Self {
        Committed {
            paths: Vec::new(),
            holds: crate::record::AckSet::new(),
        }
    }

    pub fn extend(&mut self, other: Committed) {
        self.paths.extend(other.paths);
        self.holds.merge(other.holds);
    }
}

/// One set of output files `PREFIX-SSSSS-of-NNNNN` (Beam's shard naming). Batches go round-robin
/// to shards. Files are written under a temporary name and renamed by [`ShardedFiles::finish`],
/// so a reader never sees a partial file and a rerun replaces the output instead of appending to
/// it.
pub struct ShardedFiles {
    transform: String,
    prefix: String,
    shards: Vec<Option<(PathBuf, Box<dyn FormatWriter>)>>,
    next: usize,
    /// Rows written so far (over all shards).
    rows: u64,
    open: std::sync::Arc<OpenWriter>,
    /// Acknowledgement holds of the rows written so far: released only when the files are
    /// complete (renamed), since before that the rows are not durably visible.
    held: crate::record::AckSet,
    /// Each batch written and the final flush are timed; failures counted (file sinks do not
    /// retry).
    stats: std::sync::Arc<SinkStats>,
}

impl ShardedFiles {
    pub fn new(
        transform: &str,
        prefix: &str,
        num_shards: usize,
        open: std::sync::Arc<OpenWriter>,
        stats: std::sync::Arc<SinkStats>,
    ) -> Self {
        ShardedFiles {
            transform: transform.to_string(),
            prefix: prefix.to_string(),
            shards: (0..num_shards.max(1)).map(|_| None).collect(),
            next: 0,
            rows: 0,
            open,
            held: crate::record::AckSet::new(),
            stats,
        }
    }

    /// Runs one write to the files, timing it and counting a failure.
    fn timed<T>(
        &mut self,
        write: impl FnOnce(&mut Self) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let started = std::time::Instant::now();
        let res = write(self);
        self.stats.observe_write(started);
        if res.is_err() {
            self.stats.failed();
        }
        res
    }

    pub fn shard_path(prefix: &str, shard: usize, of: usize) -> PathBuf {
        PathBuf::from(format!("{prefix}-{shard:05}-of-{of:05}"))
    }

    fn err(&self, msg: impl std::fmt::Display) -> EngineError {
        EngineError::External {
            transform: self.transform.clone(),
            message: msg.to_string(),
            source: None,
        }
    }

    fn ensure(&mut self, shard: usize) -> Result<(), EngineError> {
        if self.shards[shard].is_some() {
            return Ok(());
        }
        let path = Self::shard_path(&self.prefix, shard, self.shards.len());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| self.err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let tmp = tmp_path(&path);
        let file = File::create(&tmp)
            .map_err(|e| self.err(format!("cannot create {}: {e}", tmp.display())))?;
        let writer =
            (self.open)(BufWriter::with_capacity(1 << 20, file)).map_err(|e| self.err(e))?;
        self.shards[shard] = Some((path, writer));
        Ok(())
    }

    /// Keeps `acks` until [`ShardedFiles::finish`] made the written rows visible.
    pub fn hold(&mut self, acks: crate::record::AckSet) {
        self.held.merge(acks);
    }

    /// Rows written to this set so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn write(&mut self, rows: &RecordBatch) -> Result<(), EngineError> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        self.timed(|files| files.write_shard(rows))?;
        self.rows += rows.num_rows() as u64;
        Ok(())
    }

    fn write_shard(&mut self, rows: &RecordBatch) -> Result<(), EngineError> {
        let shard = self.next;
        self.next = (self.next + 1) % self.shards.len();
        self.ensure(shard)?;
        let (_, w) = self.shards[shard].as_mut().expect("ensured");
        w.write(rows).map_err(|e| EngineError::External {
            transform: self.transform.clone(),
            message: e,
            source: None,
        })
    }

    /// Finishes every shard (empty shards become empty files: each flushed and fsynced), renames
    /// them to their final names, and hands back the paths and the holds of their rows.
    ///
    /// # Errors
    /// A write, flush or rename failed; the holds stay here (and are released as failed when
    /// the failed run drops the sink).
    pub fn finish(&mut self) -> Result<Committed, EngineError> {
        let paths = self.timed(Self::finish_shards)?;
        Ok(Committed {
            paths,
            holds: std::mem::take(&mut self.held),
        })
    }

    /// Gives up this set: removes its temporary files and hands back the holds of its rows, to
    /// be released as failed.
    pub fn discard(&mut self) -> crate::record::AckSet {
        for (path, writer) in self.shards.iter_mut().filter_map(Option::take) {
            drop(writer);
            let tmp = tmp_path(&path);
            if let Err(e) = std::fs::remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %e, "Cannot remove an abandoned file");
            }
        }
        std::mem::take(&mut self.held)
    }

    fn finish_shards(&mut self) -> Result<Vec<PathBuf>, EngineError> {
        let mut written = Vec::new();
        for shard in 0..self.shards.len() {
            self.ensure(shard)?;
            let (path, w) = self.shards[shard].take().expect("ensured");
            w.finish().map_err(|e| self.err(e))?;
            std::fs::rename(tmp_path(&path), &path)
                .map_err(|e| self.err(format!("cannot rename to {}: {e}", path.display())))?;
            written.push(path);
        }
        Ok(written)
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".inprogress");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Every chunk, concatenated, is the file; each chunk ends at a line end.
    fn chunks(text: &[u8], lines: usize) -> Vec<Vec<u8>> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text).unwrap();
        let mut c = LineChunks::open(f.path(), lines).unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().unwrap() {
            out.push(chunk.to_vec());
        }
        out
    }

    #[test]
    fn chunks_hold_whole_lines_across_reads_and_lose_nothing() {
        // 300,000 lines of 10 to 59 bytes: several reads, tails moved to the front.
        let mut text = Vec::new();
        for i in 0..300_000usize {
            text.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 10 + i % 50));
            text.push(b'\n');
        }
        let got = chunks(&text, 1000);
        assert_eq!(got.len(), 300);
        assert!(got.iter().all(|c| c.ends_with(b"\n")));
        assert!(
            got.iter()
                .all(|c| c.iter().filter(|&&b| b == b'\n').count() == 1000)
        );
        assert_eq!(got.concat(), text);
    }

    #[test]
    fn lines_longer_than_the_buffer_grow_it_and_the_last_line_may_lack_its_newline() {
        let long = vec![b'x'; READ_SIZE * 3 + 17];
        let mut text = b"first\n".to_vec();
        text.extend(&long);
        text.extend(b"\nlast");
        let got = chunks(&text, 2);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], b"last");
        assert_eq!(got.concat(), text);
        assert!(chunks(b"", 5).is_empty());
    }
}
