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

/// Like [`copy_both_ways`], but ends early (with `ConnectionAborted`) when a policy change
/// denies the tracked connection; both sides are closed by dropping them.
pub async fn copy_both_ways_unless_denied<A, B>(
    a: A,
    b: B,
    tracked: Option<&TrackedConnection>,
) -> std::io::Result<CopyTotals>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let Some(tracked) = tracked else {
        return copy_both_ways(a, b).await;
    };
    tokio::select! {
        totals = copy_both_ways(a, b) => totals,
        _ = tracked.cancelled() => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "closed: a policy change denies this connection",
        )),
    }
}
