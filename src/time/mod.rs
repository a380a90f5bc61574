//! Event time: window assignment and watermark generation, as pure functions with unit tests.

pub mod watermark;
pub mod window;

pub use watermark::BoundedOutOfOrderness;
pub use window::{Window, assign, assign_into, merge_sessions};
