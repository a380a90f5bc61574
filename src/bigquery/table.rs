//! Table-level operations shared by the sink and `sluice setup`: making sure a dataset and a
//! table exist (with partitioning and clustering), and the write dispositions.

use arrow::datatypes::Schema;
use gcp_bigquery_client::Client;
use gcp_bigquery_client::model::clustering::Clustering;
use gcp_bigquery_client::model::dataset::Dataset;
use gcp_bigquery_client::model::query_request::QueryRequest;
use gcp_bigquery_client::model::table::Table;
use gcp_bigquery_client::model::time_partitioning::TimePartitioning;

use super::client::{BqError, MAX_ELAPSED, with_retries};
use super::schema::{self, WINDOW_START};

/// A fully resolved table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub project: String,
    pub dataset: String,
    pub table: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.project, self.dataset, self.table)
    }
}

impl Target {
    /// The table as a quoted standard-SQL name.
    pub fn sql_name(&self) -> String {
        format!("`{}.{}.{}`", self.project, self.dataset, self.table)
    }
}

/// Layout options of a created table.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Day partitioning on this column; `None` = `window_start` when the schema has it.
    pub partition_by: Option<String>,
    pub cluster_by: Vec<String>,
}

/// What [`ensure_table`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Existed,
    Created,
}

/// The BigQuery table definition for rows of `arrow`, with `layout`.
///
/// # Errors
/// A column type BigQuery cannot store, or a partitioning/clustering column that is missing or
/// of the wrong type (a configuration problem).
pub fn definition(target: &Target, arrow: &Schema, layout: &Layout) -> Result<Table, String> {
    let bq = schema::to_bigquery(arrow)?;
    let fields = bq.fields.clone().unwrap_or_default();
    let type_of = |name: &str| {
        fields.iter().find(|f| f.name == name).map(|f| {
            (
                schema::type_name(&f.r#type),
                f.mode.clone().unwrap_or_default(),
            )
        })
    };
    let mut table = Table::new(&target.project, &target.dataset, &target.table, bq.clone());
    let partition = match &layout.partition_by {
        Some(p) => Some(p.clone()),
        None => type_of(WINDOW_START).map(|_| WINDOW_START.to_string()),
    };
    if let Some(p) = partition {
        match type_of(&p) {
            Some((t, mode)) if (t == "TIMESTAMP" || t == "DATE") && mode != "REPEATED" => {
                table = table.time_partitioning(TimePartitioning::per_day().field(&p));
            }
            Some((t, _)) => {
                return Err(format!(
                    "`partition_by: {p}` needs a TIMESTAMP or DATE column, `{p}` is {t}"
                ));
            }
            None => return Err(format!("`partition_by: {p}` names no column of the input")),
        }
    }
    if !layout.cluster_by.is_empty() {
        for c in &layout.cluster_by {
            match type_of(c) {
                None => return Err(format!("`cluster_by: {c}` names no column of the input")),
                Some((t, mode)) if mode == "REPEATED" || t == "RECORD" || t == "JSON" => {
                    return Err(format!("cannot cluster on `{c}` ({t} {mode})"));
                }
                Some(_) => {}
            }
        }
        table = table.clustering(Clustering {
            fields: Some(layout.cluster_by.clone()),
        });
    }
    Ok(table)
}

/// Creates the dataset if it is missing (409 means it exists).
///
/// # Errors
/// BigQuery errors other than "already exists", after retries.
pub async fn ensure_dataset(client: &Client, target: &Target) -> Result<Ensured, BqError> {
    let created = with_retries("dataset create", MAX_ELAPSED, || async {
        client
            .dataset()
            .create(Dataset::new(&target.project, &target.dataset))
            .await
            .map_err(BqError::from)
    })
    .await;
    match created {
        Ok(_) => Ok(Ensured::Created),
        Err(e) if e.is_duplicate() => Ok(Ensured::Existed),
        Err(e) => Err(e),
    }
}

/// Gets the table's schema, or `None` when it does not exist.
///
/// # Errors
/// BigQuery errors other than 404, after retries.
pub async fn get_table(client: &Client, target: &Target) -> Result<Option<Table>, BqError> {
    let got = with_retries("tables.get", MAX_ELAPSED, || async {
        client
            .table()
            .get(&target.project, &target.dataset, &target.table, None)
            .await
            .map_err(BqError::from)
    })
    .await;
    match got {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates the table (and its dataset) from `table` unless it exists.
///
/// # Errors
/// BigQuery errors other than "already exists", after retries.
pub async fn ensure_table(
    client: &Client,
    target: &Target,
    table: Table,
) -> Result<Ensured, BqError> {
    if get_table(client, target).await?.is_some() {
        return Ok(Ensured::Existed);
    }
    ensure_dataset(client, target).await?;
    let created = with_retries("tables.insert", MAX_ELAPSED, || {
        let t = table.clone();
        async move { client.table().create(t).await.map_err(BqError::from) }
    })
    .await;
    match created {
        Ok(_) => Ok(Ensured::Created),
        Err(e) if e.is_duplicate() => Ok(Ensured::Existed),
        Err(e) => Err(e),
    }
}

/// Runs a standard-SQL statement and returns its first page of rows (as `f`/`v` JSON).
///
/// # Errors
/// BigQuery errors after retries, or the job's own errors.
pub async fn run_statement(client: &Client, project: &str, sql: &str) -> Result<usize, BqError> {
    let resp = with_retries("jobs.query", MAX_ELAPSED, || async {
        let mut req = QueryRequest::new(sql);
        req.use_legacy_sql = false;
        client
            .job()
            .query(project, req)
            .await
            .map_err(BqError::from)
    })
    .await?;
    if let Some(errors) = resp.errors.filter(|e| !e.is_empty()) {
        let msgs: Vec<String> = errors.iter().filter_map(|e| e.message.clone()).collect();
        return Err(BqError::Job(msgs.join("; ")));
    }
    Ok(resp.rows.map_or(0, |r| r.len()))
}
