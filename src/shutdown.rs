//! Waiting for the signal that stops a weft process: SIGTERM (Kubernetes) or SIGINT (a
//! terminal), whichever comes first. Every binary stops the same way.

/// Returns when SIGTERM or SIGINT arrives; an error if the handlers cannot be installed.
pub async fn signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
