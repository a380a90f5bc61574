//! `sluice setup` for BigQuery: creates, idempotently, the datasets (and, where the schema is
//! known, the tables) that a pipeline's `ReadFromBigQuery`/`WriteToBigQuery` transforms name.
//!
//! A `WriteToBigQuery` table's schema comes from the data (the Arrow schema of the first batch),
//! so `setup` creates its dataset and the sink creates the table on its first write
//! (`create_disposition: CREATE_IF_NEEDED`, with `partition_by`/`cluster_by`). `setup` reports
//! whether each table already exists.

use super::client::{self, BqError};
use super::config::{ReadSource, TableRef};
use super::table::{self, Ensured, Target};
use crate::config::{PipelineSpec, TransformConfig};

/// Why `setup` failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The pipeline names a table without a project and `GOOGLE_CLOUD_PROJECT` is unset.
    #[error("{transform}: {message}")]
    Config { transform: String, message: String },
    /// BigQuery refused or could not be reached (after retries).
    #[error("{transform}: {what}: {source}")]
    External {
        transform: String,
        what: String,
        #[source]
        source: BqError,
    },
}

/// The tables (with the transform naming each) that `spec` reads or writes.
pub fn declared_tables(spec: &PipelineSpec) -> Vec<(String, TableRef, bool)> {
    spec.transforms
        .iter()
        .filter_map(|t| match &t.config {
            TransformConfig::WriteToBigQuery(w) => {
                Some((t.name.clone(), w.table.value.clone(), true))
            }
            TransformConfig::ReadFromBigQuery(r) => match &r.source {
                ReadSource::Table(tr) => Some((t.name.clone(), tr.clone(), false)),
                ReadSource::Query(_) => None,
            },
            _ => None,
        })
        .collect()
}

/// Creates the datasets of every BigQuery table `spec` declares; returns one line per action
/// (`created dataset p.d`, `dataset p.d exists`, `table p.d.t exists` or `table p.d.t: created
/// by WriteToBigQuery on first write`). Does nothing (and connects to nothing) when the
/// pipeline has no BigQuery transform. The CLI prints the lines.
///
/// # Errors
/// The first failure; what was created before it stays (setup is idempotent, rerun it).
pub async fn setup(spec: &PipelineSpec) -> Result<Vec<String>, SetupError> {
    let declared = declared_tables(spec);
    if declared.is_empty() {
        return Ok(Vec::new());
    }
    let c = client::connect().await.map_err(|e| SetupError::External {
        transform: declared[0].0.clone(),
        what: "cannot connect to BigQuery".into(),
        source: e,
    })?;
    let mut done = Vec::new();
    let mut datasets_seen: Vec<(String, String)> = Vec::new();
    for (transform, tr, is_sink) in declared {
        let project = match &tr.project {
            Some(p) => p.clone(),
            None => client::default_project().map_err(|message| SetupError::Config {
                transform: transform.clone(),
                message,
            })?,
        };
        let target = Target {
            project: project.clone(),
            dataset: tr.dataset.clone(),
            table: tr.table.clone(),
        };
        let ext = |what: &str, e: BqError| SetupError::External {
            transform: transform.clone(),
            what: format!("{what} {target}"),
            source: e,
        };
        let key = (project.clone(), tr.dataset.clone());
        if is_sink && !datasets_seen.contains(&key) {
            let r = table::ensure_dataset(&c, &target)
                .await
                .map_err(|e| ext("cannot create dataset of", e))?;
            done.push(match r {
                Ensured::Created => format!("created dataset {project}.{}", tr.dataset),
                Ensured::Existed => format!("dataset {project}.{} exists", tr.dataset),
            });
            datasets_seen.push(key);
        }
        let exists = table::get_table(&c, &target)
            .await
            .map_err(|e| ext("cannot read table", e))?
            .is_some();
        done.push(match (exists, is_sink) {
            (true, _) => format!("table {target} exists"),
            (false, true) => format!(
                "table {target}: created by {transform} on its first write (schema from the data)"
            ),
            (false, false) => format!("table {target} does not exist yet ({transform} reads it)"),
        });
    }
    Ok(done)
}
