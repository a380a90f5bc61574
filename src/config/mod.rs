//! Pipeline files: Jinja templating, Beam YAML parsing with positions, and validation.

pub mod components;
pub mod diag;
pub mod duration;
pub mod exprs;
pub mod limits;
pub mod schema_check;
pub mod source;
pub mod spec;
pub mod template;
pub mod window;
pub mod yaml;
pub mod yaml_load;

pub use components::{AggFn, CombineField, ExprKind, ExprSpec, Language, TransformConfig};
pub use diag::{Diagnostic, Diagnostics, Pos, Reporter};
pub use spec::{InputRef, PipelineSpec, TestSpec, TransformSpec, load, parse};
pub use window::{WindowKind, Windowing};
