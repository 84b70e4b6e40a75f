//! `weft-cni`: the chained CNI plugin that hands each new pod to `weft-node`.
//!
//! ADD forwards the pod (container id, netns, namespace/name/uid from CNI_ARGS, IPs from
//! prevResult) to the daemon and waits until it is enrolled or declined, then prints
//! prevResult unchanged. If the daemon is unreachable, ADD fails for a namespace its last
//! state lists as enrolled (or when there is no state at all): an enrolled pod must never
//! start unprotected. DEL and GC always succeed. Errors are the spec's JSON on stdout; the
//! plugin's own messages go to stderr only.

use std::io::{Read, Write};
use std::path::Path;

use weft_cni::daemon::{self, DaemonError, LastKnown};
use weft_cni::protocol::{PodAttachment, Request};
use weft_cni::spec::{
    self, CniError, Code, Command, Environment, NetConf, LATEST_VERSION, SUPPORTED_VERSIONS,
};

fn main() {
    let mut stdin = Vec::new();
    let (version, outcome) = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&stdin),
        Err(e) => (
            LATEST_VERSION.to_owned(),
            Err(CniError::new(
                Code::IoFailure,
                "cannot read stdin",
                e.to_string(),
            )),
        ),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match outcome {
        Ok(Some(text)) => {
            let _ = writeln!(out, "{text}");
        }
        Ok(None) => {}
        Err(error) => {
            eprintln!("weft-cni: {} ({})", error.msg, error.details);
            let _ = writeln!(out, "{}", error.to_json(&version));
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}

/// Runs one command; returns the version to report errors in and the stdout text.
fn run(stdin: &[u8]) -> (String, Result<Option<String>, CniError>) {
    let env = match Environment::read(|k| std::env::var(k).ok()) {
        Ok(env) => env,
        Err(e) => return (LATEST_VERSION.to_owned(), Err(e)),
    };
    if env.command == Command::Version {
        return (LATEST_VERSION.to_owned(), Ok(Some(version_text(stdin))));
    }
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(e) => {
            // Report in the version the runtime asked for when it is readable.
            let asked = requested_version(stdin)
                .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
                .unwrap_or_else(|| LATEST_VERSION.to_owned());
            return (asked, Err(e));
        }
    };
    let version = conf.cni_version.clone();
    let result = match env.command {
        Command::Add => add_or_check(&env, &conf, true),
        Command::Check => add_or_check(&env, &conf, false).map(|_| None),
        Command::Del => {
            let container_id = env.container_id.clone().unwrap_or_default();
            if let Err(e) =
                daemon::ask(Path::new(&conf.socket_path), &Request::Del { container_id })
            {
                eprintln!(
                    "weft-cni: DEL: {e}; the daemon cleans up from its own view when it runs"
                );
            }
            Ok(None)
        }
        Command::Gc => match conf.valid_container_ids() {
            // Without the runtime's list of valid attachments there is nothing to compare
            // against: collecting would release every pod.
            Ok(None) => {
                eprintln!("weft-cni: GC without cni.dev/valid-attachments: nothing to do");
                Ok(None)
            }
            Ok(Some(valid_container_ids)) => {
                let request = Request::Gc {
                    valid_container_ids,
                };
                if let Err(e) = daemon::ask(Path::new(&conf.socket_path), &request) {
                    eprintln!("weft-cni: GC: {e}");
                }
                Ok(None)
            }
            Err(e) => Err(e),
        },
        Command::Status => match daemon::ask(Path::new(&conf.socket_path), &Request::Status) {
            Ok(answer) if answer.ok => Ok(None),
            Ok(answer) => Err(CniError::new(
                Code::PluginNotAvailable,
                "weft-node is not ready",
                answer.message,
            )),
            Err(e) => Err(CniError::new(
                Code::PluginNotAvailable,
                "weft-node is not available",
                e.to_string(),
            )),
        },
        Command::Version => Ok(Some(version_text(stdin))),
    };
    (version, result)
}

/// The `cniVersion` stdin asks for, if stdin is JSON that names one.
fn requested_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(str::to_owned)
}

fn version_text(stdin: &[u8]) -> String {
    let asked = requested_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_owned());
    serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

/// ADD (prints prevResult) and CHECK (prints nothing).
fn add_or_check(
    env: &Environment,
    conf: &NetConf,
    is_add: bool,
) -> Result<Option<String>, CniError> {
    let prev = conf.require_prev_result()?;
    let netns = env.netns.clone().unwrap_or_default();
    if !Path::new(&netns).exists() {
        return Err(CniError::new(
            Code::ContainerUnknown,
            format!("network namespace {netns:?} does not exist"),
            "CNI_NETNS must name the pod's network namespace",
        ));
    }
    let mut result = prev.clone();
    if let Some(map) = result.as_object_mut() {
        map.insert("cniVersion".into(), conf.cni_version.clone().into());
    }
    let output = is_add.then(|| result.to_string());
    let Some((namespace, name, uid)) = env.pod() else {
        // Not a Kubernetes pod (no K8S_POD_* args): nothing for the mesh to do.
        return Ok(output);
    };
    let attachment = PodAttachment {
        container_id: env.container_id.clone().unwrap_or_default(),
        netns,
        namespace: namespace.clone(),
        name: name.clone(),
        uid,
        ips: spec::ips_from_result(prev)?,
    };
    let request = if is_add {
        Request::Add(attachment)
    } else {
        Request::Check(attachment)
    };
    match daemon::ask(Path::new(&conf.socket_path), &request) {
        Ok(answer) if answer.ok => Ok(output),
        Ok(answer) if answer.permanent => Err(CniError::new(
            Code::RefusedByDaemon,
            format!("weft-node refused pod {namespace}/{name}"),
            answer.message,
        )),
        Ok(answer) => Err(CniError::new(
            Code::TryAgainLater,
            format!("weft-node could not set up pod {namespace}/{name}"),
            answer.message,
        )),
        Err(DaemonError::Unreachable(e)) => match daemon::last_known(Path::new(&conf.run_dir), &namespace) {
            LastKnown::NotEnrolled => {
                eprintln!("weft-cni: weft-node unreachable ({e}); namespace {namespace} is not enrolled, passing through");
                Ok(output)
            }
            LastKnown::Enrolled => Err(CniError::new(
                Code::TryAgainLater,
                format!("weft-node is unreachable and namespace {namespace} is enrolled in the mesh"),
                format!("refusing to start pod {name} unprotected; retry once weft-node runs ({e})"),
            )),
            LastKnown::Unknown(why) => Err(CniError::new(
                Code::TryAgainLater,
                "weft-node is unreachable and its last state is unknown",
                format!("refusing to start pod {namespace}/{name} unprotected ({why}); retry once weft-node runs"),
            )),
        },
        Err(e @ DaemonError::Exchange(_)) => Err(CniError::new(
            Code::TryAgainLater,
            format!("weft-node did not confirm pod {namespace}/{name}"),
            e.to_string(),
        )),
    }
}
