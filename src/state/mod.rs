//! Durable key-value state for stateful transforms (SPEC §3, "Durable state"; issue #9):
//! namespaced keys with atomic multi-key commits, on one of four backends chosen by
//! `options.state`. Combine checkpoints and the deduplication memory are written through
//! [`StateStore`].

pub mod config;
pub mod embedded;
pub mod lease;
pub mod memory;
pub mod postgres;
pub mod redis;
mod store;

#[cfg(test)]
mod contract;

pub use config::{Backend, StateConfig};
pub(crate) use store::redact;
pub use store::{StateError, StateStore, open};
