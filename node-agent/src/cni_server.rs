//! The unix socket `weft-cni` talks to (`<run-dir>/cni.sock`): one JSON request line in,
//! one JSON response line out. Malformed requests get an error answer; the server keeps
//! serving.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use weft_cni::protocol::{Request, Response};

use crate::enrollment::PodManager;

/// Largest request accepted (a pod with many IPs is still far below this).
const MAX_REQUEST: usize = 64 * 1024;

/// Binds the socket, replacing a stale one from an earlier run.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
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
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    let response = match reader.read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => handle(request, &pods).await,
            Err(error) => Response {
                ok: false,
                enrolled: false,
                message: format!("malformed request: {error}"),
            },
        },
        Err(error) => Response {
            ok: false,
            enrolled: false,
            message: format!("cannot read request: {error}"),
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
        },
    }
}
