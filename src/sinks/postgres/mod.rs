//! `WriteToPostgres`: batched, idempotent upserts into a Postgres table.

pub mod config;
pub mod sink;
pub mod sql;
pub(crate) mod tls;

pub use config::{PostgresConfig, Tls};
pub use sink::WriteToPostgres;
