//! Pipeline files: Jinja templating, Beam YAML parsing with positions, and validation.

pub mod components;
pub mod diag;
pub mod duration;
pub mod exprs;
pub mod spec;
pub mod template;
pub mod window;
pub mod yaml;

pub use components::{AggFn, CombineField, ExprKind, ExprSpec, Language, TransformConfig};
pub use diag::{Diagnostic, Diagnostics, Pos, Reporter};
pub use spec::{InputRef, PipelineSpec, TestSpec, TransformSpec, load, parse};
pub use window::{WindowKind, Windowing};
