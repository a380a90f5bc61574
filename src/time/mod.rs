//! Event time: window assignment and watermark generation, as pure functions with unit tests.

pub mod watermark;
pub mod window;

pub use watermark::BoundedOutOfOrderness;
pub use window::{Window, assign, merge_sessions};
