//! Installing weft into the node's CNI configuration, keeping it there, and taking it out.
//!
//! A container runtime reads the CNI conf dir (`/etc/cni/net.d`) and uses the first file in
//! byte order with a `.conf`, `.conflist` or `.json` name. The primary CNI (Calico, Cilium,
//! flannel, the bridge plugin, ...) owns its own file there and may rewrite it at any time.
//! weft never edits that file: it writes a file of its own that sorts before it
//! (`00-weft.conflist`, or a name further up when the primary already sorts before that)
//! holding the primary's plugins with `weft-cni` appended, so the runtime runs the primary's
//! chain and then hands the pod to this daemon. Whatever the primary does to its file, the
//! repair loop regenerates weft's copy from it within a poll interval; a deleted or edited
//! weft file is rewritten the same way. Every write goes to a temp file (a name no runtime
//! loads) and is renamed into place, so no runtime ever reads half a file.
//!
//! The `weft-cni` binary is copied into the CNI bin dir the same way (temp file, rename).
//!
//! Uninstall removes weft's conf file and the binary, so new pods start with the primary's
//! chain alone; only the daemon decides when (its DaemonSet was deleted, or the API says
//! it is no longer allowed to run): a restart or an upgrade removes nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use serde_json::{json, Map, Value};

/// The plugin type weft-cni registers as (and its file name in the bin dir).
pub const PLUGIN_TYPE: &str = "weft-cni";
/// The top-level key marking a conf file weft generated; its value names the primary's file.
pub const GENERATED_FROM_KEY: &str = "weft.dev/generated-from";
/// Names weft's conf file may take, in order of preference: the first that sorts before the
/// primary's file is used.
const OWNED_NAMES: [&str; 3] = ["00-weft.conflist", "0-weft.conflist", "-weft.conflist"];
/// Extensions a runtime loads from the conf dir (libcni's `ConfFiles`).
const CONF_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];
/// Conf files larger than this are not CNI configs (and are not read whole).
const MAX_CONF_BYTES: u64 = 1024 * 1024;

/// Where weft goes on this node.
#[derive(Debug, Clone)]
pub struct CniInstallConfig {
    /// The CNI bin dir of the node (as mounted in the daemon's container).
    pub bin_dir: PathBuf,
    /// The CNI conf dir of the node.
    pub conf_dir: PathBuf,
    /// The `weft-cni` binary to install.
    pub plugin_source: PathBuf,
    /// What the installed plugin is told: the daemon's socket and run dir as the node sees
    /// them (the runtime runs the plugin on the host).
    pub socket_path: PathBuf,
    pub run_dir: PathBuf,
}

/// Installing, repairing or removing weft's CNI files failed.
#[derive(Debug, thiserror::Error)]
pub enum CniInstallError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the primary CNI config {path} is not usable: {reason}")]
    BadPrimary { path: PathBuf, reason: String },
    #[error("no name for weft's conflist sorts before the primary CNI config {primary:?}; rename the primary's file")]
    NoName { primary: String },
}

/// What one install pass found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallOutcome {
    /// weft's conf file and binary are in place (`changed`: this pass wrote something).
    Installed { conf: PathBuf, changed: bool },
    /// The conf dir holds no primary CNI config yet: nothing to chain onto.
    NoPrimary,
}

/// A conf file of the conf dir, read.
struct ConfFile {
    name: String,
    path: PathBuf,
    text: String,
}

/// Installs and removes weft's CNI files; holds what it last wrote to notice changes cheaply.
pub struct CniInstaller {
    config: CniInstallConfig,
    /// The plugin's bytes, read once at start: the image's binary does not change under a
    /// running daemon, and a repair must not depend on the source still being readable.
    plugin: Vec<u8>,
    /// (dev, inode, size, mtime) of the binary as last written or verified.
    plugin_seen: Option<(u64, u64, u64, i64)>,
}

// === impl CniInstaller ===

impl CniInstaller {
    /// Reads the plugin binary to install.
    pub fn new(config: CniInstallConfig) -> Result<CniInstaller, CniInstallError> {
        let plugin =
            std::fs::read(&config.plugin_source).map_err(|source| CniInstallError::Io {
                action: "read the weft-cni binary",
                path: config.plugin_source.clone(),
                source,
            })?;
        Ok(CniInstaller {
            config,
            plugin,
            plugin_seen: None,
        })
    }

    /// The conf dir watched.
    pub fn conf_dir(&self) -> &Path {
        &self.config.conf_dir
    }

    /// One pass: the binary and weft's conf file made what they should be; stale weft conf
    /// files (an earlier name) removed.
    pub fn install(&mut self) -> Result<InstallOutcome, CniInstallError> {
        self.install_plugin()?;
        let files = self.conf_files()?;
        let (owned, others): (Vec<&ConfFile>, Vec<&ConfFile>) =
            files.iter().partition(|file| is_generated(&file.text));
        let Some(primary) = others.first() else {
            return Ok(InstallOutcome::NoPrimary);
        };
        let name = OWNED_NAMES
            .iter()
            .find(|name| name.as_bytes() < primary.name.as_bytes())
            .ok_or_else(|| CniInstallError::NoName {
                primary: primary.name.clone(),
            })?;
        let wanted = generate(primary, &self.config)?;
        let target = self.config.conf_dir.join(name);
        let mut changed = false;
        let current = owned.iter().find(|file| file.name == *name);
        if current.map(|file| file.text.as_str()) != Some(wanted.as_str()) {
            write_atomically(&target, wanted.as_bytes(), 0o644)?;
            tracing::info!(conf = %target.display(), primary = %primary.name, "wrote weft's CNI config");
            changed = true;
        }
        for stale in owned.iter().filter(|file| file.name != *name) {
            remove_file(&stale.path)?;
            tracing::info!(conf = %stale.path.display(), "removed a stale weft CNI config");
            changed = true;
        }
        Ok(InstallOutcome::Installed {
            conf: target,
            changed,
        })
    }

    /// Removes weft's conf files and the plugin binary.
    pub fn uninstall(&mut self) -> Result<(), CniInstallError> {
        for file in self.conf_files()? {
            if is_generated(&file.text) {
                remove_file(&file.path)?;
                tracing::info!(conf = %file.path.display(), "removed weft's CNI config");
            }
        }
        let binary = self.config.bin_dir.join(PLUGIN_TYPE);
        remove_file(&binary)?;
        tracing::info!(binary = %binary.display(), "removed the weft-cni binary");
        self.plugin_seen = None;
        Ok(())
    }

    /// The binary in the bin dir, rewritten when missing or different.
    fn install_plugin(&mut self) -> Result<(), CniInstallError> {
        let target = self.config.bin_dir.join(PLUGIN_TYPE);
        let seen = |meta: &std::fs::Metadata| {
            (
                meta.dev(),
                meta.ino(),
                meta.size(),
                meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            )
        };
        if let Ok(meta) = std::fs::metadata(&target) {
            if self.plugin_seen == Some(seen(&meta)) {
                return Ok(());
            }
            // Unknown to this process (first pass, or replaced): compare the bytes once.
            if meta.len() == self.plugin.len() as u64
                && meta.permissions().mode() & 0o111 != 0
                && std::fs::read(&target).is_ok_and(|bytes| bytes == self.plugin)
            {
                self.plugin_seen = Some(seen(&meta));
                return Ok(());
            }
        }
        write_atomically(&target, &self.plugin, 0o755)?;
        let meta = std::fs::metadata(&target).map_err(|source| CniInstallError::Io {
            action: "inspect",
            path: target.clone(),
            source,
        })?;
        self.plugin_seen = Some(seen(&meta));
        tracing::info!(binary = %target.display(), "installed the weft-cni binary");
        Ok(())
    }

    /// The conf dir's loadable files, in the order a runtime considers them.
    fn conf_files(&self) -> Result<Vec<ConfFile>, CniInstallError> {
        let dir = &self.config.conf_dir;
        let entries = std::fs::read_dir(dir).map_err(|source| CniInstallError::Io {
            action: "list",
            path: dir.clone(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let loadable = Path::new(&name)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| CONF_EXTENSIONS.contains(&e));
            if !loadable {
                continue;
            }
            let path = entry.path();
            // A directory or a huge file is nothing a runtime would load as a config.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() && meta.len() <= MAX_CONF_BYTES => {}
                _ => continue,
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => files.push(ConfFile { name, path, text }),
                // Removed between listing and reading: the next pass sees the new state.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CniInstallError::Io {
                        action: "read",
                        path,
                        source,
                    })
                }
            }
        }
        files.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(files)
    }
}

/// Whether a conf file is one weft generated (it carries the marker key at the top level).
fn is_generated(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|value| value.get(GENERATED_FROM_KEY).cloned())
        .is_some()
}

/// weft's conflist for a primary config: its plugins, then weft-cni (once).
fn generate(primary: &ConfFile, config: &CniInstallConfig) -> Result<String, CniInstallError> {
    let bad = |reason: String| CniInstallError::BadPrimary {
        path: primary.path.clone(),
        reason,
    };
    let value: Value = serde_json::from_str(&primary.text).map_err(|e| bad(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(bad("not a JSON object".into()));
    };
    let mut list = if object.contains_key("plugins") {
        object
    } else {
        // A single-plugin `.conf`: the same network as a list of one.
        let mut plugin = object;
        let mut list = Map::new();
        for key in ["cniVersion", "name"] {
            if let Some(value) = plugin.remove(key) {
                list.insert(key.to_owned(), value);
            }
        }
        list.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
        list
    };
    if !list.get("name").is_some_and(Value::is_string) {
        return Err(bad("no network `name`".into()));
    }
    let Some(Value::Array(plugins)) = list.get_mut("plugins") else {
        return Err(bad("`plugins` is not a list".into()));
    };
    if plugins.is_empty() {
        return Err(bad("`plugins` is empty".into()));
    }
    if !plugins
        .iter()
        .all(|p| p.get("type").is_some_and(Value::is_string))
    {
        return Err(bad("a plugin without a `type`".into()));
    }
    // A primary wired by hand may already chain weft-cni; it is kept where it is.
    if !plugins.iter().any(|p| p["type"] == PLUGIN_TYPE) {
        plugins.push(json!({
            "type": PLUGIN_TYPE,
            "socketPath": config.socket_path,
            "runDir": config.run_dir,
        }));
    }
    list.insert(
        GENERATED_FROM_KEY.into(),
        Value::String(primary.name.clone()),
    );
    let mut text =
        serde_json::to_string_pretty(&Value::Object(list)).map_err(|e| bad(e.to_string()))?;
    text.push('\n');
    Ok(text)
}

/// Writes `path` through a temp file in the same directory (a name no runtime loads), with
/// `mode`, synced, then renamed over the target.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CniInstallError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| CniInstallError::Io {
            action,
            path,
            source,
        }
    };
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        // The mode whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod", &tmp))?;
        file.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename into", path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Removes a file; one already gone is fine.
fn remove_file(path: &Path) -> Result<(), CniInstallError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CniInstallError::Io {
            action: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

/// How often the repair loop looks at the conf dir and the binary.
pub const REPAIR_INTERVAL: Duration = Duration::from_millis(250);

/// Runs `f` on the installer. A pass that panicked leaves it usable: what it holds besides
/// its config is a cache of what it last wrote.
pub fn with_installer<T>(
    installer: &Mutex<CniInstaller>,
    f: impl FnOnce(&mut CniInstaller) -> T,
) -> T {
    match installer.lock() {
        Ok(mut installer) => f(&mut installer),
        Err(poisoned) => f(&mut poisoned.into_inner()),
    }
}

/// One install pass on the blocking pool: `None` once weft's CNI config and plugin are in
/// place, else why not (what readiness says).
pub async fn install_pass(installer: &Arc<Mutex<CniInstaller>>) -> Option<String> {
    let installer = installer.clone();
    let pass = tokio::task::spawn_blocking(move || {
        with_installer(&installer, |installer| match installer.install() {
            Ok(InstallOutcome::Installed { .. }) => None,
            Ok(InstallOutcome::NoPrimary) => Some(format!(
                "no primary CNI config in {} yet; weft chains onto it once it appears",
                installer.conf_dir().display()
            )),
            Err(error) => Some(error.to_string()),
        })
    })
    .await;
    pass.unwrap_or_else(|join| Some(format!("the CNI install pass failed: {join}")))
}

/// Keeps weft installed: one pass every [`REPAIR_INTERVAL`] until `stop` turns true, after
/// a first pass whose outcome was `first`. `report` hears every change of outcome (`None`:
/// installed, else why not); each change is logged once, and the last good files stay.
pub async fn keep_installed(
    installer: Arc<Mutex<CniInstaller>>,
    first: Option<String>,
    mut stop: watch::Receiver<bool>,
    report: impl Fn(Option<String>) + Send + 'static,
) {
    let mut last_problem = first;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPAIR_INTERVAL) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let problem = install_pass(&installer).await;
        if problem != last_problem {
            log_outcome(&problem);
            report(problem.clone());
            last_problem = problem;
        }
    }
}

/// The log line for an install pass's outcome.
pub fn log_outcome(problem: &Option<String>) {
    match problem {
        Some(why) => tracing::warn!("CNI install: {why}"),
        None => tracing::info!("CNI install: weft's CNI config and plugin are in place"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp tree (bin, net.d, src) removed on drop.
    struct Dirs {
        root: PathBuf,
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    impl Dirs {
        fn new(tag: &str) -> Dirs {
            let root = std::env::temp_dir().join(format!(
                "weft-cni-install-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&root);
            for sub in ["bin", "net.d", "src"] {
                std::fs::create_dir_all(root.join(sub)).unwrap();
            }
            std::fs::write(root.join("src/weft-cni"), b"#!/bin/sh\necho v1\n").unwrap();
            Dirs { root }
        }
        fn path(&self, sub: &str) -> PathBuf {
            self.root.join(sub)
        }
        fn installer(&self) -> CniInstaller {
            CniInstaller::new(CniInstallConfig {
                bin_dir: self.path("bin"),
                conf_dir: self.path("net.d"),
                plugin_source: self.path("src/weft-cni"),
                socket_path: "/var/run/weft/cni.sock".into(),
                run_dir: "/var/run/weft".into(),
            })
            .unwrap()
        }
        fn conf(&self, name: &str) -> Option<Value> {
            std::fs::read_to_string(self.path("net.d").join(name))
                .ok()
                .map(|t| serde_json::from_str(&t).unwrap())
        }
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.path("net.d"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap"}]}"#;

    fn types(conf: &Value) -> Vec<&str> {
        conf["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn chains_weft_after_the_primary_in_a_file_that_sorts_first() {
        let dirs = Dirs::new("chain");
        std::fs::write(dirs.path("net.d/10-bridge.conflist"), BRIDGE).unwrap();
        let mut installer = dirs.installer();
        let outcome = installer.install().unwrap();
        assert_eq!(
            outcome,
            InstallOutcome::Installed {
                conf: dirs.path("net.d/00-weft.conflist"),
                changed: true
            }
        );
        let conf = dirs.conf("00-weft.conflist").unwrap();
        assert_eq!(types(&conf), ["bridge", "portmap", "weft-cni"]);
        assert_eq!(conf["name"], "k8s");
        assert_eq!(conf[GENERATED_FROM_KEY], "10-bridge.conflist");
        assert_eq!(conf["plugins"][2]["socketPath"], "/var/run/weft/cni.sock");
        // The primary's own file is untouched.
        assert_eq!(
            std::fs::read_to_string(dirs.path("net.d/10-bridge.conflist")).unwrap(),
            BRIDGE
        );
        let binary = dirs.path("bin/weft-cni");
        assert_eq!(std::fs::read(&binary).unwrap(), b"#!/bin/sh\necho v1\n");
        assert_eq!(
            std::fs::metadata(&binary).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // A second pass changes nothing; no temp files are left behind.
        assert_eq!(
            installer.install().unwrap(),
            InstallOutcome::Installed {
                conf: dirs.path("net.d/00-weft.conflist"),
                changed: false
            }
        );
        assert_eq!(dirs.names(), ["00-weft.conflist", "10-bridge.conflist"]);
    }

    #[test]
    fn follows_the_primary_and_repairs_its_own_file() {
        let dirs = Dirs::new("repair");
        std::fs::write(dirs.path("net.d/10-bridge.conflist"), BRIDGE).unwrap();
        let mut installer = dirs.installer();
        installer.install().unwrap();
        // The primary rewrites its file: weft's copy follows it.
        std::fs::write(
            dirs.path("net.d/10-bridge.conflist"),
            BRIDGE.replace("cni0", "cni1"),
        )
        .unwrap();
        installer.install().unwrap();
        let conf = dirs.conf("00-weft.conflist").unwrap();
        assert_eq!(conf["plugins"][0]["bridge"], "cni1");
        assert_eq!(types(&conf), ["bridge", "portmap", "weft-cni"]);
        // Deleted, or edited by someone else: written again.
        std::fs::remove_file(dirs.path("net.d/00-weft.conflist")).unwrap();
        installer.install().unwrap();
        assert!(dirs.conf("00-weft.conflist").is_some());
        std::fs::write(
            dirs.path("net.d/00-weft.conflist"),
            format!(r#"{{"{GENERATED_FROM_KEY}":"x","name":"k8s","plugins":[]}}"#),
        )
        .unwrap();
        installer.install().unwrap();
        assert_eq!(
            types(&dirs.conf("00-weft.conflist").unwrap()),
            ["bridge", "portmap", "weft-cni"]
        );
        // The binary replaced by something else: copied again.
        std::fs::write(dirs.path("bin/weft-cni"), b"other").unwrap();
        installer.install().unwrap();
        assert_eq!(
            std::fs::read(dirs.path("bin/weft-cni")).unwrap(),
            b"#!/bin/sh\necho v1\n"
        );
    }

    #[test]
    fn picks_a_name_before_a_primary_that_sorts_early_and_drops_the_old_one() {
        let dirs = Dirs::new("names");
        std::fs::write(dirs.path("net.d/10-bridge.conflist"), BRIDGE).unwrap();
        let mut installer = dirs.installer();
        installer.install().unwrap();
        // A primary named to sort before 00-weft: weft moves in front of it.
        std::fs::write(dirs.path("net.d/00-calico.conflist"), BRIDGE).unwrap();
        installer.install().unwrap();
        assert_eq!(
            dirs.names(),
            [
                "0-weft.conflist",
                "00-calico.conflist",
                "10-bridge.conflist"
            ]
        );
        assert_eq!(
            dirs.conf("0-weft.conflist").unwrap()[GENERATED_FROM_KEY],
            "00-calico.conflist"
        );
        std::fs::write(dirs.path("net.d/-a.conf"), BRIDGE).unwrap();
        assert!(matches!(
            installer.install(),
            Err(CniInstallError::NoName { .. })
        ));
    }

    #[test]
    fn converts_a_single_plugin_conf_and_keeps_a_hand_wired_weft() {
        let dirs = Dirs::new("conf");
        std::fs::write(
            dirs.path("net.d/10-flannel.conf"),
            r#"{"cniVersion":"0.4.0","name":"cbr0","type":"flannel","delegate":{"isDefaultGateway":true}}"#,
        )
        .unwrap();
        // Files a runtime does not load are ignored.
        std::fs::write(dirs.path("net.d/05-notes.txt"), "hello").unwrap();
        let mut installer = dirs.installer();
        installer.install().unwrap();
        let conf = dirs.conf("00-weft.conflist").unwrap();
        assert_eq!(conf["cniVersion"], "0.4.0");
        assert_eq!(conf["name"], "cbr0");
        assert_eq!(types(&conf), ["flannel", "weft-cni"]);
        assert!(conf["plugins"][0].get("name").is_none());
        assert_eq!(conf["plugins"][0]["delegate"]["isDefaultGateway"], true);

        std::fs::write(
            dirs.path("net.d/10-flannel.conf"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"weft-cni","socketPath":"/s"}]}"#,
        )
        .unwrap();
        installer.install().unwrap();
        assert_eq!(
            types(&dirs.conf("00-weft.conflist").unwrap()),
            ["bridge", "weft-cni"]
        );
    }

    #[test]
    fn waits_for_a_primary_and_refuses_a_broken_one_without_touching_its_file() {
        let dirs = Dirs::new("primary");
        let mut installer = dirs.installer();
        assert_eq!(installer.install().unwrap(), InstallOutcome::NoPrimary);
        assert!(dirs.names().is_empty());
        std::fs::write(dirs.path("net.d/10-bridge.conflist"), BRIDGE).unwrap();
        installer.install().unwrap();
        // A half-written primary: weft's last good copy stays, an error names the file.
        std::fs::write(
            dirs.path("net.d/10-bridge.conflist"),
            "{\"name\": \"k8s\", \"plu",
        )
        .unwrap();
        let error = installer.install().unwrap_err().to_string();
        assert!(error.contains("10-bridge.conflist"), "{error}");
        assert_eq!(
            types(&dirs.conf("00-weft.conflist").unwrap()),
            ["bridge", "portmap", "weft-cni"]
        );
    }

    #[test]
    fn uninstall_removes_only_what_weft_wrote() {
        let dirs = Dirs::new("uninstall");
        std::fs::write(dirs.path("net.d/10-bridge.conflist"), BRIDGE).unwrap();
        std::fs::write(dirs.path("bin/bridge"), b"bridge").unwrap();
        let mut installer = dirs.installer();
        installer.install().unwrap();
        installer.uninstall().unwrap();
        assert_eq!(dirs.names(), ["10-bridge.conflist"]);
        assert!(!dirs.path("bin/weft-cni").exists());
        assert!(dirs.path("bin/bridge").exists());
        // Twice is fine.
        installer.uninstall().unwrap();
    }
}
