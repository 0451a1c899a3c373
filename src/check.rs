//! `cranium check`: load the project, build the DAG, and collect every finding.

use std::path::Path;
use std::sync::Arc;

use crate::config::interp::Env;
use crate::dag::{self, ProjectGraph};
use crate::diag::Diagnostics;
use crate::project::{self, Project, ProjectError};

/// The result of checking a project.
pub struct Checked {
    pub project: Arc<Project>,
    pub graph: Arc<ProjectGraph>,
    pub diagnostics: Diagnostics,
}

/// Load and check the project at `root` (the folder holding `cranium.yaml`).
pub fn check(root: &Path, env: &Env) -> Result<Checked, ProjectError> {
    let (project, mut diagnostics) = project::load(root, env)?;
    let graph = dag::build(&project, &mut diagnostics);
    diagnostics.sort();
    diagnostics.load_sources(root);
    Ok(Checked {
        project: Arc::new(project),
        graph: Arc::new(graph),
        diagnostics,
    })
}
