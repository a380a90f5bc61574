//! Downstream stores: sinks that write rows to databases and caches, idempotently, holding each
//! batch's acknowledgements until the store confirmed the write.

pub mod postgres;
pub mod redis;
pub mod retry;
pub mod values;
