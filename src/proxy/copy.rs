//! Copies bytes both ways between two streams with half-close: when one side finishes
//! sending, the other side's write half is shut down and the opposite direction carries on.
//!
//! Buffers are borrowed from a small per-thread pool only while data is in flight: an idle
//! connection (both directions waiting to read) holds no buffer at all, which is what lets
//! a node carry tens of thousands of idle connections in a few KiB each.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::tracker::TrackedConnection;

/// Size of a copy buffer: large enough for multi-Gbit/s streams.
const COPY_BUFFER: usize = 64 * 1024;
/// Idle buffers kept per thread for reuse.
const POOL_PER_THREAD: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buffer() -> Box<[u8]> {
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; COPY_BUFFER].into_boxed_slice())
}

fn give_buffer(buffer: Box<[u8]>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_PER_THREAD {
            pool.push(buffer);
        }
    });
}

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyTotals {
    /// Bytes moved from `a` to `b` (in the proxy, client to upstream).
    pub a_to_b: u64,
    /// Bytes moved from `b` to `a` (in the proxy, upstream to client).
    pub b_to_a: u64,
}

/// One direction of the copy.
#[derive(Default)]
struct Direction {
    /// Present only while read data waits to be written.
    buffer: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    read_done: bool,
    finished: bool,
    moved: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.start == self.end && !self.read_done {
                let mut buffer = self.buffer.take().unwrap_or_else(take_buffer);
                let mut read_buf = ReadBuf::new(&mut buffer);
                match reader.as_mut().poll_read(cx, &mut read_buf) {
                    Poll::Pending => {
                        // Nothing to read: hand the buffer back so an idle connection
                        // holds none, and push out anything the writer buffered.
                        give_buffer(buffer);
                        if let Poll::Ready(Err(e)) = writer.as_mut().poll_flush(cx) {
                            return Poll::Ready(Err(e));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        give_buffer(buffer);
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = read_buf.filled().len();
                        if n == 0 {
                            self.read_done = true;
                            give_buffer(buffer);
                        } else {
                            self.start = 0;
                            self.end = n;
                            self.buffer = Some(buffer);
                        }
                    }
                }
            }
            if let Some(buffer) = self.buffer.as_ref() {
                while self.start < self.end {
                    let n = ready!(writer
                        .as_mut()
                        .poll_write(cx, &buffer[self.start..self.end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "peer stopped accepting data",
                        )));
                    }
                    self.start += n;
                    self.moved += n as u64;
                }
                if let Some(buffer) = self.buffer.take() {
                    give_buffer(buffer);
                }
                self.start = 0;
                self.end = 0;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give_buffer(buffer);
        }
    }
}

/// Copies until both directions have ended (or one fails); counts what moved either way.
async fn copy_lazy<A, B>(a: &mut A, b: &mut B, totals: &mut CopyTotals) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    let result = poll_fn(|cx| {
        let forward = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let backward = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (forward, backward) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    totals.a_to_b = a_to_b.moved;
    totals.b_to_a = b_to_a.moved;
    result
}

/// Copies until both directions have ended; returns the byte counts.
pub async fn copy_both_ways<A, B>(mut a: A, mut b: B) -> io::Result<CopyTotals>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut totals = CopyTotals::default();
    copy_lazy(&mut a, &mut b, &mut totals).await?;
    Ok(totals)
}

/// Copies both ways counting bytes into `meter` as they move (`a` is the client side:
/// what is read from it is the request direction). Ends early if the tracked connection
/// is denied by a policy change. Returns the byte totals even when it ends with an error.
pub async fn copy_metered<A, B>(
    a: A,
    b: B,
    meter: crate::telemetry::ByteMeter,
    tracked: Option<&TrackedConnection>,
) -> (CopyTotals, Option<io::Error>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use crate::telemetry::connection::Counted;
    let mut a = Counted::new(a, meter.received);
    let mut b = Counted::new(b, meter.sent);
    let mut totals = CopyTotals::default();
    let error = {
        let copy = copy_lazy(&mut a, &mut b, &mut totals);
        match tracked {
            None => copy.await.err(),
            Some(tracked) => tokio::select! {
                result = copy => result.err(),
                _ = tracked.cancelled() => Some(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed: a policy change denies this connection",
                )),
            },
        }
    };
    if error.is_some() {
        // The copy stopped part-way; report what was read on each side.
        totals = CopyTotals {
            a_to_b: a.total(),
            b_to_a: b.total(),
        };
    }
    (totals, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (client, proxy_a) = tokio::io::duplex(1024);
        let (proxy_b, server) = tokio::io::duplex(1024);
        let copy = tokio::spawn(copy_both_ways(proxy_a, proxy_b));
        let (mut client, mut server) = (client, server);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, data);
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        assert_eq!(writer.await.unwrap(), b"done");
        let totals = copy.await.unwrap().unwrap();
        assert_eq!(
            totals,
            CopyTotals {
                a_to_b: 200_000,
                b_to_a: 4
            }
        );
    }
}
