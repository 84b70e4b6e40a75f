//! Config sources: where the mesh model comes from. Each source feeds the one translation in
//! [`crate::model::translate`] and publishes snapshots to a [`crate::model::MeshStore`]; the
//! rest of weft sees a source only through the [`ConfigSource`] trait.
//!
//! - [`FileSource`]: a local multi-document YAML file, watched and hot-reloaded; a bad edit is
//!   rejected and the last good snapshot stays in force.
//! - [`KubeSource`]: the Kubernetes API server, watched; an invalid object is left out
//!   alone, and a lost API server keeps the last snapshot serving.

pub mod file_source;
pub mod kube_source;
mod source;

pub use crate::model::ConfigError;
pub use file_source::{FileSource, FileSourceLimits};
pub use kube_source::{KubeSource, KubeSourceError, KubeSourceOptions};
pub use source::{ConfigSource, KindStatus, RejectedObject, ReloadStats, SourceStatus};
