//! The daemon's state file in its run dir (`state.json`): every pod it has been told about
//! (with its netns, so a restarted daemon finds enrolled pods again without any CNI call),
//! and the namespaces enrolled in the mesh (read by `weft-cni` when the daemon is down).
//! Written atomically (temp file + rename), so a reader never sees half a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_cni::protocol::{PodAttachment, STATE_FILE};

/// What survives a daemon restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonState {
    /// Namespaces labelled for the mesh in the config in force.
    pub enrolled_namespaces: Vec<String>,
    /// Every pod on this node the CNI plugin reported, by container id.
    pub pods: BTreeMap<String, PodAttachment>,
}

/// Reading or writing the state file failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {reason}; move it away to start from an empty state")]
    Corrupt { path: PathBuf, reason: String },
}

/// Reads the state file; a missing file is an empty state.
pub fn load(run_dir: &Path) -> Result<DaemonState, StateError> {
    let path = run_dir.join(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DaemonState::default()),
        Err(source) => Err(StateError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// Writes the state file atomically.
pub fn save(run_dir: &Path, state: &DaemonState) -> Result<(), StateError> {
    let path = run_dir.join(STATE_FILE);
    let tmp = run_dir.join(format!("{STATE_FILE}.tmp"));
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io {
            action,
            path,
            source,
        }
    };
    let text = serde_json::to_string_pretty(state).map_err(|e| StateError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    // Written 0600 whatever the umask: it lists every pod's netns and container id.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        file.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io("replace", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_treats_missing_as_empty() {
        let dir = std::env::temp_dir().join(format!("weft-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
        assert_eq!(load(&dir).unwrap(), DaemonState::default());
        let mut state = DaemonState {
            enrolled_namespaces: vec!["shop".into()],
            ..DaemonState::default()
        };
        state.pods.insert(
            "c1".into(),
            PodAttachment {
                container_id: "c1".into(),
                netns: "/var/run/netns/p1".into(),
                namespace: "shop".into(),
                name: "order".into(),
                uid: "u1".into(),
                ips: vec!["10.0.0.5".parse().unwrap()],
            },
        );
        save(&dir, &state).unwrap();
        assert_eq!(load(&dir).unwrap(), state);
        std::fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        assert!(matches!(load(&dir), Err(StateError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
