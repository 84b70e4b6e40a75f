//! An h2 CONNECT stream as a byte stream: `AsyncRead` + `AsyncWrite` over DATA frames, with
//! END_STREAM as the half-close (shutdown) and flow-control capacity released as data is read.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest chunk handed to h2 per write; h2 splits it into frames.
const MAX_WRITE_CHUNK: usize = 1024 * 1024;

/// A bidirectional byte stream carried by one HTTP/2 stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    read_closed: bool,
    write_closed: bool,
    /// Dropped with the stream; lets a pool count open streams.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl H2Stream {
    /// Joins the two halves of one h2 stream: `send` for our DATA frames, `recv` for the
    /// peer's (a client's request sender and response body, or a server's response sender
    /// and request body).
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            read_closed: false,
            write_closed: false,
            _guard: None,
        }
    }

    /// Attaches a value whose drop marks the end of this stream.
    pub fn with_guard(mut self, guard: Box<dyn Send + Sync>) -> Self {
        self._guard = Some(guard);
        self
    }
}

fn h2_to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        match error.into_io() {
            Some(e) => e,
            None => io::Error::other("h2 I/O error"),
        }
    } else if error.reason() == Some(h2::Reason::NO_ERROR)
        || error.reason() == Some(h2::Reason::CANCEL)
    {
        io::Error::new(io::ErrorKind::ConnectionReset, error)
    } else {
        io::Error::other(error)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Give the window back as soon as the chunk is ours: at most one chunk
                    // waits here, so memory stays bounded by the window.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(error)) => return Poll::Ready(Err(h2_to_io(error))),
                None => self.read_closed = true,
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        let want = buf.len().min(MAX_WRITE_CHUNK);
        self.send.reserve_capacity(want);
        let granted = loop {
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(0))) => continue,
                Poll::Ready(Some(Ok(n))) => break n,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(h2_to_io(error))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream closed by peer",
                    )))
                }
                Poll::Pending => {
                    // While waiting for window, notice a peer that reset the stream.
                    if let Poll::Ready(reset) = self.send.poll_reset(cx) {
                        let error = match reset {
                            Ok(reason) => io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                format!("stream reset by peer: {reason:?}"),
                            ),
                            Err(e) => h2_to_io(e),
                        };
                        return Poll::Ready(Err(error));
                    }
                    return Poll::Pending;
                }
            }
        };
        let n = granted.min(want);
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes frames out from its connection task; there is nothing buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        // A stream dropped before both directions finished is cancelled, so the peer
        // does not wait on it forever.
        if !(self.write_closed && self.read_closed) {
            self.send.send_reset(h2::Reason::CANCEL);
        }
    }
}
