//! [`Batch`]: an Arrow `RecordBatch` of user columns plus Sluice's hidden metadata columns.
//!
//! Event time, window and pane travel as ordinary columns with reserved `__sluice_` names, so
//! every Arrow kernel (`filter`, `take`, `concat`) keeps them aligned with the data for free.
//! Sinks and `tests:` comparisons see only the user columns.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::error::ArrowError;

use super::ack::{AckSet, AckToken};

/// Names and types of the hidden columns.
pub mod meta {
    /// Prefix shared by every hidden column; user fields may not use it.
    pub const PREFIX: &str = "__sluice_";
    /// Event time, milliseconds since the Unix epoch (Int64).
    pub const EVENT_TIME: &str = "__sluice_ts";
    /// Window bounds of an aggregated row, milliseconds (Int64), `[start, end)`.
    pub const WINDOW_START: &str = "__sluice_window_start";
    pub const WINDOW_END: &str = "__sluice_window_end";
    /// Pane index (Int64) and timing (Int8: see `PaneTiming`) of an aggregated row.
    pub const PANE_INDEX: &str = "__sluice_pane_index";
    pub const PANE_TIMING: &str = "__sluice_pane_timing";
    /// Deterministic row id (Utf8), used by sinks for idempotent writes.
    pub const ROW_ID: &str = "__sluice_id";

    pub fn is_hidden(name: &str) -> bool {
        name.starts_with(PREFIX)
    }
}

/// The unit of data between transforms.
#[derive(Clone)]
pub struct Batch {
    pub rows: RecordBatch,
    /// Holds on the source input this batch derives from (`record::ack`).
    pub acks: AckSet,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("rows", &self.rows.num_rows())
            .field("acks", &self.acks.len())
            .finish()
    }
}

impl Batch {
    /// A batch with no acknowledgement holds (file sources, `Create`).
    pub fn new(rows: RecordBatch) -> Self {
        Batch {
            rows,
            acks: AckSet::new(),
        }
    }

    /// A batch computed from this one: it carries the same acknowledgement holds. Every operator
    /// output must be made with `derive` (or [`Batch::merged`]) so that no input is acknowledged
    /// before what was derived from it is written.
    pub fn derive(&self, rows: RecordBatch) -> Batch {
        Batch {
            rows,
            acks: self.acks.clone(),
        }
    }

    /// A batch computed from several (an aggregation's pane): the union of their holds.
    pub fn merged(rows: RecordBatch, acks: impl IntoIterator<Item = AckToken>) -> Batch {
        Batch {
            rows,
            acks: acks.into_iter().collect(),
        }
    }

    pub fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }

    pub fn schema(&self) -> SchemaRef {
        self.rows.schema()
    }

    /// Event times in milliseconds, when timestamps were assigned.
    pub fn event_times(&self) -> Option<&Int64Array> {
        self.rows
            .column_by_name(meta::EVENT_TIME)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
    }

    pub fn column_i64(&self, name: &str) -> Option<&Int64Array> {
        self.rows
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
    }

    /// The user-visible columns only (what sinks write).
    pub fn user_rows(&self) -> RecordBatch {
        user_columns(&self.rows)
    }

    /// Returns this batch with `name` set to `array`, replacing an existing column of that name.
    ///
    /// # Errors
    /// When `array`'s length differs from the batch's.
    pub fn with_column(&self, name: &str, array: ArrayRef) -> Result<Batch, ArrowError> {
        with_column(&self.rows, name, array).map(Batch::new)
    }
}

/// Projects away the hidden columns.
pub fn user_columns(rows: &RecordBatch) -> RecordBatch {
    let schema = rows.schema();
    if !schema.fields().iter().any(|f| meta::is_hidden(f.name())) {
        return rows.clone();
    }
    let keep: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !meta::is_hidden(f.name()))
        .map(|(i, _)| i)
        .collect();
    rows.project(&keep)
        .expect("projection indices come from the batch's own schema")
}

/// Sets column `name` (appending it, or replacing one of that name in place).
///
/// # Errors
/// When `array`'s length differs from the batch's.
pub fn with_column(
    rows: &RecordBatch,
    name: &str,
    array: ArrayRef,
) -> Result<RecordBatch, ArrowError> {
    let schema = rows.schema();
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
    let field = Arc::new(Field::new(name, array.data_type().clone(), true));
    match schema.index_of(name) {
        Ok(i) => {
            fields[i] = field;
            columns[i] = array;
        }
        Err(_) => {
            fields.push(field);
            columns.push(array);
        }
    }
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
    )
}
