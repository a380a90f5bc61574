//! Event time: window assignment and watermark generation, as pure functions with unit tests.

pub mod epoch;
pub mod rfc3339;
pub mod watermark;
pub mod window;

pub use watermark::BoundedOutOfOrderness;
pub use window::{SessionMerge, Window, assign, assign_into, session_merge};
