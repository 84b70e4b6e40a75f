//! Copies bytes both ways between two streams with half-close: when one side finishes
//! sending, the other side's write half is shut down and the opposite direction carries on.

use tokio::io::{AsyncRead, AsyncWrite};

use super::tracker::TrackedConnection;

/// Buffer per direction: large enough for multi-Gbit/s streams, small enough for many
/// thousands of idle connections (tokio only allocates it while copying).
const COPY_BUFFER: usize = 64 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyTotals {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Copies until both directions have ended; returns the byte counts.
pub async fn copy_both_ways<A, B>(mut a: A, mut b: B) -> std::io::Result<CopyTotals>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_to_b, b_to_a) =
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER).await?;
    Ok(CopyTotals { a_to_b, b_to_a })
}

/// Copies both ways counting bytes into `meter` as they move (`a` is the client side:
/// what is read from it is the request direction). Ends early if the tracked connection
/// is denied by a policy change. Returns the byte totals even when it ends with an error.
pub async fn copy_metered<A, B>(
    a: A,
    b: B,
    meter: crate::telemetry::ByteMeter,
    tracked: Option<&TrackedConnection>,
) -> (CopyTotals, Option<std::io::Error>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use crate::telemetry::connection::Counted;
    let mut a = Counted::new(a, meter.received);
    let mut b = Counted::new(b, meter.sent);
    let error = {
        let copy =
            tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUFFER, COPY_BUFFER);
        match tracked {
            None => copy.await.err(),
            Some(tracked) => tokio::select! {
                result = copy => result.err(),
                _ = tracked.cancelled() => Some(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "closed: a policy change denies this connection",
                )),
            },
        }
    };
    (
        CopyTotals {
            a_to_b: a.total(),
            b_to_a: b.total(),
        },
        error,
    )
}
