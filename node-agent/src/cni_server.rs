//! The unix socket `weft-cni` talks to (`<run-dir>/cni.sock`): one JSON request line in,
//! one JSON response line out. Malformed requests get an error answer; the server keeps
//! serving.
//!
//! Only root may talk to it: the run dir is made 0700 and the socket 0600 explicitly (never
//! from the umask), and every connection's peer credentials (SO_PEERCRED) must be uid 0 —
//! an unprivileged process that could ADD a netns of its own would get listeners serving
//! any pod's identity.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use weft_cni::protocol::{Request, Response};

use crate::enrollment::PodManager;

/// Largest request accepted (a pod with many IPs is still far below this).
const MAX_REQUEST: usize = 64 * 1024;

/// Creates the run dir (0700, fixed if it exists with looser modes) whatever the umask.
pub fn prepare_run_dir(run_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)?;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds the socket (0600), replacing a stale one from an earlier run.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if path.symlink_metadata().is_ok() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Why a connection's peer may not use the socket, if it may not.
fn refuse_peer(stream: &UnixStream) -> Option<String> {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => None,
        Ok(cred) => Some(format!(
            "only root may use the CNI socket (peer uid {}, pid {:?})",
            cred.uid(),
            cred.pid()
        )),
        Err(error) => Some(format!("cannot read the peer's credentials: {error}")),
    }
}

/// Serves CNI requests until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    pods: Arc<PodManager>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let pods = pods.clone();
                tokio::spawn(async move { serve_one(stream, pods).await });
            }
            Err(error) => {
                tracing::warn!(%error, "accept on the CNI socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_one(stream: UnixStream, pods: Arc<PodManager>) {
    let refused = refuse_peer(&stream);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    let response = match (refused, reader.read_line(&mut line).await) {
        // The request is read (and ignored) first, so the client sees the answer rather
        // than a broken pipe.
        (Some(why), _) => {
            tracing::warn!("refused a CNI socket client: {why}");
            metrics::counter!(weft::telemetry::registry::CONNECTIONS_REFUSED, "reason" => "cni_peer")
                .increment(1);
            Response {
                ok: false,
                enrolled: false,
                message: why,
                permanent: true,
            }
        }
        (None, Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => handle(request, &pods).await,
            Err(error) => Response {
                ok: false,
                enrolled: false,
                message: format!("malformed request: {error}"),
                permanent: true,
            },
        },
        (None, Err(error)) => Response {
            ok: false,
            enrolled: false,
            message: format!("cannot read request: {error}"),
            permanent: false,
        },
    };
    let mut text =
        serde_json::to_string(&response).unwrap_or_else(|_| String::from("{\"ok\":false}"));
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

async fn handle(request: Request, pods: &PodManager) -> Response {
    match request {
        Request::Add(pod) => {
            let label = format!("{}/{}", pod.namespace, pod.name);
            let response = pods.add(pod).await;
            tracing::info!(pod = %label, ok = response.ok, enrolled = response.enrolled, message = %response.message, "CNI ADD");
            response
        }
        Request::Check(pod) => pods.check(&pod).await,
        Request::Del { container_id } => pods.del(&container_id).await,
        Request::Gc {
            valid_container_ids,
        } => pods.gc(&valid_container_ids).await,
        Request::Status => Response {
            ok: true,
            enrolled: false,
            message: "ready".into(),
            permanent: false,
        },
    }
}
