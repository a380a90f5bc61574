//! `Check`: data-quality gates on a transform's output, and the valve (SPEC §3, docs/checks.md).

pub mod config;
mod operator;
pub mod rules;

pub use config::CheckConfig;
pub use operator::Check;

#[cfg(test)]
mod tests;
