//! Records: the [`Batch`] that flows between transforms, Sluice's hidden metadata columns, and
//! conversions between JSON and Arrow.

pub mod ack;
mod batch;
pub mod error_record;
pub mod json;
pub mod numbers;
pub mod rows;
pub mod schema;
pub mod screen;

pub use ack::{Ack, AckSet, AckStatus, AckToken, Hold, Releaser, abandon};
pub use batch::{Batch, meta, user_columns, with_column};
