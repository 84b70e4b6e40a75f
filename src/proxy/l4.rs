//! The one sequence every proxied L4 connection runs, whatever its entry point (HBONE
//! inbound, plaintext inbound 15006, outbound 15001, SOCKS5):
//!
//! report -> authorize -> connect -> track -> copy.
//!
//! The entry point builds the [`ConnectionReport`] (labels from the snapshot) and supplies
//! the parts that differ: an [`Authorize`] step (inbound: the destination's policies;
//! outbound: routing and the loop check) that yields a [`Connect`] step (the upstream
//! connect: a socket to the app, an HBONE tunnel, or — later — a waypoint), and a
//! [`Downstream`] that answers the client (HBONE 200 or a status, a SOCKS5 reply, or
//! nothing for a redirected socket). Every refusal is reported with its response flag
//! before the client is answered; an admitted connection is tracked (when the entry point
//! re-checks policy) for as long as its bytes are copied.

use std::fmt::Display;
use std::future::Future;
use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::copy::copy_metered;
use super::tracker::{ConnectionTracker, TrackedAttrs};
use crate::telemetry::{ConnectionReport, ResponseFlag};

/// Why a connection was refused, as the report records it.
pub trait Refusal: Display + Send + Sync {
    /// The response flag it is counted and logged with.
    fn flag(&self) -> ResponseFlag;
    /// `namespace/name` of the policy that decided, when one did.
    fn policy(&self) -> Option<&str>;
}

/// The policy (or routing) step: consumes the connection's plan and either refuses it or
/// hands over the step that opens the upstream.
pub trait Authorize: Send {
    /// What opens the upstream once the connection is authorized.
    type Connect: Connect;
    /// Decides on the connection described by `attrs`: the connect step when it may
    /// proceed, the refusal (reported, then sent to the client) when not.
    fn authorize(
        self,
        attrs: &TrackedAttrs,
    ) -> Result<Self::Connect, <Self::Connect as Connect>::Error>;
}

/// The upstream connect step: where the far side of the connection comes from. A waypoint
/// plugs in here with its own upstream type.
pub trait Connect: Send {
    /// The far side the bytes are copied to.
    type Upstream: AsyncRead + AsyncWrite + Unpin + Send;
    /// Why the connection was refused (by this step or by [`Authorize`]).
    type Error: Refusal;
    /// Opens the upstream; an error is reported and the client refused with it.
    fn connect(self) -> impl Future<Output = Result<Self::Upstream, Self::Error>> + Send;
}

/// The client side of the connection and how it is answered.
pub trait Downstream<E>: Send {
    /// The client's bytes once it is admitted.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;
    /// The upstream is open: tell the client and hand over its stream.
    fn admit(self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// The connection is refused: tell the client, if its protocol can say why.
    fn refuse(self, refusal: &E) -> impl Future<Output = ()> + Send;
}

/// Runs the sequence for one connection whose report is already open; returns when both
/// sides finished (or the connection was refused, or a policy change cut it).
pub async fn run<A, D>(
    mut report: ConnectionReport,
    attrs: TrackedAttrs,
    tracker: Option<&Arc<ConnectionTracker>>,
    authorize: A,
    downstream: D,
) where
    A: Authorize,
    D: Downstream<<A::Connect as Connect>::Error>,
{
    let connect = match authorize.authorize(&attrs) {
        Ok(connect) => connect,
        Err(refusal) => return refused(report, downstream, refusal).await,
    };
    // Boxed: a connect future (TLS handshake state) is large and is freed once the
    // upstream is open, so a long-lived relay stays small.
    let upstream = match Box::pin(connect.connect()).await {
        Ok(upstream) => upstream,
        Err(refusal) => return refused(report, downstream, refusal).await,
    };
    let client = match downstream.admit().await {
        Ok(client) => client,
        Err(error) => {
            tracing::debug!(%error, "client went away before it was answered");
            report.opened();
            report.closed((0, 0), Some(&error));
            return;
        }
    };
    let tracked = tracker.map(|tracker| tracker.track(attrs));
    let meter = report.opened();
    let (totals, error) = copy_metered(client, upstream, meter, tracked.as_ref()).await;
    report.closed((totals.a_to_b, totals.b_to_a), error.as_ref());
}

async fn refused<E: Refusal, D: Downstream<E>>(
    report: ConnectionReport,
    downstream: D,
    refusal: E,
) {
    report.refused(refusal.flag(), &refusal.to_string(), refusal.policy());
    downstream.refuse(&refusal).await;
}

/// A downstream that is a plain socket: admitted as it is, refused by closing it.
pub struct PlainDownstream<S>(pub S);

impl<S, E> Downstream<E> for PlainDownstream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    E: Refusal,
{
    type Stream = S;

    async fn admit(self) -> io::Result<S> {
        Ok(self.0)
    }

    async fn refuse(self, _refusal: &E) {}
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::telemetry::{ConnectionId, Reporter, Security, WorkloadLabels};

    #[derive(Debug, thiserror::Error)]
    #[error("refused in test")]
    struct TestRefusal(ResponseFlag);

    impl Refusal for TestRefusal {
        fn flag(&self) -> ResponseFlag {
            self.0
        }
        fn policy(&self) -> Option<&str> {
            None
        }
    }

    /// Steps that record what ran; `deny` refuses at the authorize step.
    struct Steps {
        deny: bool,
        connected: Arc<AtomicBool>,
        upstream: DuplexStream,
    }

    impl Authorize for Steps {
        type Connect = Steps;
        fn authorize(self, _: &TrackedAttrs) -> Result<Steps, TestRefusal> {
            if self.deny {
                Err(TestRefusal(ResponseFlag::Deny))
            } else {
                Ok(self)
            }
        }
    }

    impl Connect for Steps {
        type Upstream = DuplexStream;
        type Error = TestRefusal;
        async fn connect(self) -> Result<DuplexStream, TestRefusal> {
            self.connected.store(true, Ordering::Relaxed);
            Ok(self.upstream)
        }
    }

    /// A client that records how it was answered.
    struct Client {
        stream: DuplexStream,
        answers: Arc<Mutex<Vec<String>>>,
    }

    impl Downstream<TestRefusal> for Client {
        type Stream = DuplexStream;
        async fn admit(self) -> io::Result<DuplexStream> {
            self.answers.lock().unwrap().push("admitted".into());
            Ok(self.stream)
        }
        async fn refuse(self, refusal: &TestRefusal) {
            self.answers
                .lock()
                .unwrap()
                .push(format!("refused {}", refusal.flag()));
        }
    }

    fn report() -> ConnectionReport {
        ConnectionReport::new(
            ConnectionId::next(),
            Reporter::Destination,
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            Arc::new(WorkloadLabels::default()),
            Arc::new(WorkloadLabels::default()),
            None,
            Security::None,
        )
    }

    fn attrs() -> TrackedAttrs {
        TrackedAttrs {
            peer: None,
            source: "10.0.0.1:1000".parse().unwrap(),
            destination: "10.0.0.2:8080".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_refused_connection_never_connects_and_is_answered_as_refused() {
        let (_app, upstream) = tokio::io::duplex(64);
        let (_client, stream) = tokio::io::duplex(64);
        let connected = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let tracker = ConnectionTracker::new();
        let steps = Steps {
            deny: true,
            connected: connected.clone(),
            upstream,
        };
        let client = Client {
            stream,
            answers: answers.clone(),
        };
        run(report(), attrs(), Some(&tracker), steps, client).await;
        assert!(
            !connected.load(Ordering::Relaxed),
            "connected after a denial"
        );
        assert_eq!(*answers.lock().unwrap(), ["refused DENY"]);
        assert!(tracker.is_empty());
    }

    #[tokio::test]
    async fn an_admitted_connection_is_tracked_while_bytes_flow() {
        let (mut app, upstream) = tokio::io::duplex(64);
        let (mut client, stream) = tokio::io::duplex(64);
        let connected = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let tracker = ConnectionTracker::new();
        let steps = Steps {
            deny: false,
            connected: connected.clone(),
            upstream,
        };
        let downstream = Client {
            stream,
            answers: answers.clone(),
        };
        let relay = tokio::spawn({
            let tracker = tracker.clone();
            async move { run(report(), attrs(), Some(&tracker), steps, downstream).await }
        });
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(tracker.len(), 1, "an open connection is tracked");
        assert!(connected.load(Ordering::Relaxed));
        assert_eq!(*answers.lock().unwrap(), ["admitted"]);
        drop(client);
        drop(app);
        relay.await.unwrap();
        assert!(tracker.is_empty(), "a finished connection is forgotten");
    }
}
