//! The project directory: what the generator owns there, the marker that says it made the directory, and removal that touches nothing else.
//!
//! A directory is a project only when it holds the marker
//! `.comfy-remote/state.json` (written by every scaffold). The generator owns
//! the files it wrote (listed in the state), its directories (`build/`,
//! `utils/`, `wheels/`, `sdist/`, `custom_nodes/`) and Python's `__pycache__/` of its
//! `workflow.py`; everything else in the directory is the user's. Removal
//! never touches a path that a run is about to read (the workflow, the
//! config file, local custom node packs) nor any directory holding one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DeployError, Result};

/// The generator's own directory inside a project.
pub const STATE_DIR: &str = ".comfy-remote";
/// The marker and state file, relative to the project directory.
pub const STATE_FILE: &str = ".comfy-remote/state.json";
/// Subdirectories the generator owns and rewrites on every run.
pub const OWNED_DIRS: &[&str] = &["build", "utils", "wheels", "sdist", "custom_nodes"];
/// Files every project has (also owned when a state predates the file list).
pub const FIXED_FILES: &[&str] = &["workflow.py", "modal_config.json", "README.md"];
/// Python's byte-code cache of the generated `workflow.py` (written by `modal deploy`).
const PYCACHE: &str = "__pycache__";

/// State kept in the project between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectState {
    pub nonce: String,
    pub content_hash: String,
    /// The content hash of the last successful `modal deploy` (recorded before the URL is asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub app_name: String,
    /// The files the last scaffold wrote, relative to the project (what Clean Build removes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl ProjectState {
    pub fn load(project: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(project.join(STATE_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&self, project: &Path) -> Result<()> {
        let dir = project.join(STATE_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| DeployError::Write { path: dir, source })?;
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        let path = project.join(STATE_FILE);
        std::fs::write(&path, text).map_err(|source| DeployError::Write { path, source })
    }
}

/// The generator made this directory (it holds the marker).
pub fn is_project(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}

/// Paths a run reads and so must never delete: the workflow, the config file, local packs.
#[derive(Debug, Clone, Default)]
pub struct Keep {
    paths: Vec<PathBuf>,
}

impl Keep {
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        Keep {
            paths: paths.into_iter().map(|p| real(&p)).collect(),
        }
    }

    /// `p` is kept, lies inside something kept, or holds something kept.
    fn touches(&self, p: &Path) -> bool {
        let p = real(p);
        self.paths
            .iter()
            .any(|k| k.starts_with(&p) || p.starts_with(k))
    }
}

/// The real path when it exists (links resolved), else the absolute one.
fn real(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Remove `rel` under `dir` (a file or a whole directory), sparing what `keep`
/// protects: a directory holding a kept path is emptied around it.
/// Returns the paths that were spared.
pub fn remove(dir: &Path, rel: &str, keep: &Keep) -> Result<Vec<PathBuf>> {
    let mut spared = Vec::new();
    remove_path(&dir.join(rel), keep, &mut spared)?;
    Ok(spared)
}

fn remove_path(p: &Path, keep: &Keep, spared: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return Ok(());
    };
    let gone = |source| DeployError::Write {
        path: p.to_path_buf(),
        source,
    };
    if !keep.touches(p) {
        return if meta.is_dir() {
            std::fs::remove_dir_all(p).map_err(gone)
        } else {
            std::fs::remove_file(p).map_err(gone)
        };
    }
    if !meta.is_dir() || keep.paths.iter().any(|k| real(p).starts_with(k)) {
        spared.push(p.to_path_buf());
        return Ok(());
    }
    let entries = std::fs::read_dir(p).map_err(|source| DeployError::Read {
        path: p.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        remove_path(&e.path(), keep, spared)?;
    }
    Ok(())
}

/// Clean Build: remove what the generator owns in `dir` and nothing else.
/// Refuses a directory the generator did not make. The state (build nonce,
/// last deploy) stays, so a Clean Build alone does not rebuild the image.
pub fn clean(dir: &Path, keep: &Keep, sink: crate::runner::Sink<'_>) -> Result<()> {
    let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    if empty {
        return Ok(());
    }
    if !is_project(dir) {
        return Err(DeployError::NotAProject {
            path: dir.to_path_buf(),
        });
    }
    let state = ProjectState::load(dir).unwrap_or_default();
    let mut owned: Vec<String> = state
        .files
        .iter()
        .filter(|f| !f.is_empty() && safe_rel(f))
        .cloned()
        .collect();
    owned.extend(FIXED_FILES.iter().map(|f| f.to_string()));
    owned.extend(OWNED_DIRS.iter().map(|d| d.to_string()));
    owned.push(PYCACHE.to_string());
    owned.sort();
    owned.dedup();
    sink(&format!(
        "clean build: removing the generated files in {}",
        dir.display()
    ));
    let mut spared = Vec::new();
    for rel in &owned {
        spared.extend(remove(dir, rel, keep)?);
    }
    for p in spared {
        sink(&format!(
            "clean build: kept {} (this run reads it)",
            p.display()
        ));
    }
    Ok(())
}

/// A relative path that stays inside the project (the state file is not trusted blindly).
fn safe_rel(rel: &str) -> bool {
    let p = Path::new(rel);
    !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        && !p.starts_with(STATE_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn removal_spares_kept_paths_and_the_directories_holding_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = tmp.path();
        write(&d.join("build/a.txt"), "gen");
        write(&d.join("build/mine/config.json"), "user");
        write(&d.join("utils/__init__.py"), "gen");
        let keep = Keep::new([d.join("build/mine/config.json")]);
        let spared = remove(d, "build", &keep).expect("remove");
        assert!(!d.join("build/a.txt").exists());
        assert_eq!(
            std::fs::read_to_string(d.join("build/mine/config.json")).expect("kept"),
            "user"
        );
        assert_eq!(spared, [d.join("build/mine/config.json")]);
        remove(d, "utils", &keep).expect("remove");
        assert!(!d.join("utils").exists());
    }

    #[test]
    fn clean_refuses_a_directory_without_the_marker_and_keeps_user_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = &tmp.path().join("project");
        write(&d.join("modal_config.json"), "{}");
        write(&d.join("notes.txt"), "mine");
        let err = clean(d, &Keep::default(), &mut |_| {}).expect_err("no marker");
        assert!(matches!(err, DeployError::NotAProject { .. }), "{err:?}");
        assert!(d.join("modal_config.json").is_file() && d.join("notes.txt").is_file());

        ProjectState {
            files: vec!["workflow.py".into(), "old.json".into(), "../outside".into()],
            nonce: "n".into(),
            ..Default::default()
        }
        .save(d)
        .expect("state");
        write(&d.join("workflow.py"), "gen");
        write(&d.join("old.json"), "gen");
        write(&d.join("__pycache__/workflow.cpython-311.pyc"), "gen");
        write(&tmp.path().join("outside"), "not ours");
        let mut lines = Vec::new();
        clean(d, &Keep::new([d.join("modal_config.json")]), &mut |l| {
            lines.push(l.to_string())
        })
        .expect("clean");
        assert!(!d.join("workflow.py").exists() && !d.join("old.json").exists());
        assert!(!d.join("__pycache__").exists());
        assert!(d.join("notes.txt").is_file(), "a user file stays");
        assert!(
            d.join("modal_config.json").is_file(),
            "the config read stays"
        );
        assert!(is_project(d), "the marker and state stay");
        assert!(tmp.path().join("outside").is_file());
        assert!(lines.iter().any(|l| l.contains("kept")), "{lines:?}");
    }
}
