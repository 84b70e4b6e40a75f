//! Config sources: where the mesh model comes from. Each source feeds the one translation in
//! [`crate::model::translate`] and publishes snapshots to a [`crate::model::MeshStore`]; the
//! rest of weft sees a source only through the [`ConfigSource`] trait.
//!
//! - [`FileSource`]: a local multi-document YAML file, watched and hot-reloaded; a bad edit is
//!   rejected and the last good snapshot stays in force.

pub mod file_source;
mod source;

pub use crate::model::ConfigError;
pub use file_source::{FileSource, FileSourceLimits};
pub use source::{ConfigSource, ReloadStats, SourceStatus};
