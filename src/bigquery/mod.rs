//! BigQuery: `WriteToBigQuery` (Storage Write API or streaming inserts), `ReadFromBigQuery`
//! (query paging, and the high-water-mark feeder) and `sluice setup` support. See
//! docs/bigquery.md.

pub mod client;
pub mod config;
pub mod feeder;
pub mod hwm;
pub mod proto;
pub mod schema;
pub mod setup;
pub mod sink;
pub mod source;
pub mod storage_write;
pub mod table;

pub use config::{ReadConfig, TableRef, WriteConfig};
pub use setup::setup;
