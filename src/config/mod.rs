//! Configuration as written: `cranium.yaml` and job files, as plain serde types.
//!
//! Nothing here opens a connection or checks anything beyond the shape of the YAML; turning these into a
//! checked [`crate::project::Project`] is the loader's job.

pub mod interp;
pub mod job;
pub mod project;
pub mod types;

pub use job::{JobFile, StepCommon, StepDefaults};
pub use project::{AlertChannel, Connection, ConnectionKind, ProjectConfig, ProjectDefaults};
pub use types::{ByteSize, HumanDuration, OneOrMany};
