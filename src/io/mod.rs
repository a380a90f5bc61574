//! File sources and sinks: JSON Lines, CSV and Parquet.

pub mod csv;
pub mod files;
pub mod json;
pub mod parquet;
pub mod sink;
pub mod streaming;
