//! `WriteToRedis` (a Sluice extension): rows written as hashes, JSON strings, strings or
//! sorted-set members under keys built from a template over the row's fields.

pub mod commands;
pub mod config;
pub mod sink;

pub use config::{Mode, RedisConfig, Template};
pub use sink::WriteToRedis;
