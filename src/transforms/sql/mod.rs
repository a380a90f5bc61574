//! `Sql`: a SQL query over the transform's inputs, run by DataFusion. A single input is the table
//! `PCOLLECTION`; `input: {a: X, b: Y}` names the tables `a` and `b` (Beam YAML's convention).

pub mod analysis;
mod operator;
pub mod stateless;
pub mod windowed;

pub use operator::{Sql, table_names};
use operator::{clean, register, sql_options};
pub use windowed::WindowedSpec;
