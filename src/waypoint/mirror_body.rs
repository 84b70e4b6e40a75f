//! The request body of a mirrored request. [`Tee`] wraps the body on its way to the primary
//! backend and hands a copy of every frame (data and trailers; `Bytes` clones share the
//! buffer) to each mirror's [`MirrorBody`], through a channel bounded by the bytes it holds.
//!
//! The primary never waits for a mirror: once a mirror lags more than [`MIRROR_LAG_BYTES`]
//! behind the primary, its copy is abandoned and its body ends in an error instead, so
//! its upstream sees an aborted request, never a silently shortened one. A mirror that went
//! away costs nothing further.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::upstream::BodyError;

/// Bytes a mirror may lag behind the primary before its copy is abandoned.
pub const MIRROR_LAG_BYTES: usize = 1 << 20;

/// What a frame counts against the lag (so a stream of tiny frames is bounded too).
fn weight(frame: &Frame<Bytes>) -> usize {
    frame.data_ref().map_or(0, Bytes::len).max(64)
}

/// Why a mirror's body ended early.
#[derive(Debug, thiserror::Error)]
pub enum MirrorBodyError {
    /// The mirror read slower than the primary, or the primary's body failed.
    #[error("the mirrored request body was abandoned: {0}")]
    Abandoned(&'static str),
}

/// One mirror's end of the tee.
struct Feed {
    frames: mpsc::UnboundedSender<Frame<Bytes>>,
    lag: Arc<AtomicUsize>,
    abandoned: Arc<AtomicBool>,
}

/// The primary's body, copying each frame to the mirrors.
pub struct Tee<B> {
    inner: B,
    feeds: Vec<Feed>,
}

/// A mirror's copy of the request body.
pub struct MirrorBody {
    frames: mpsc::UnboundedReceiver<Frame<Bytes>>,
    lag: Arc<AtomicUsize>,
    abandoned: Arc<AtomicBool>,
    size_hint: SizeHint,
}

// === impl Tee ===

impl<B> Tee<B>
where
    B: Body<Data = Bytes>,
{
    /// Wraps `inner` and returns a body per mirror, `mirrors` in all.
    pub fn new(inner: B, mirrors: usize) -> (Tee<B>, Vec<MirrorBody>) {
        let size_hint = inner.size_hint();
        let mut feeds = Vec::with_capacity(mirrors);
        let mut bodies = Vec::with_capacity(mirrors);
        for _ in 0..mirrors {
            let (frames, receiver) = mpsc::unbounded_channel();
            let abandoned = Arc::new(AtomicBool::new(false));
            let lag = Arc::new(AtomicUsize::new(0));
            feeds.push(Feed {
                frames,
                lag: lag.clone(),
                abandoned: abandoned.clone(),
            });
            bodies.push(MirrorBody {
                frames: receiver,
                lag,
                abandoned,
                size_hint,
            });
        }
        if inner.is_end_stream() {
            // No body (a GET): hyper will not poll it; the mirrors' bodies end empty, cleanly.
            feeds.clear();
        }
        (Tee { inner, feeds }, bodies)
    }

    fn copy_out(&mut self, frame: &Frame<Bytes>) {
        self.feeds.retain(|feed| {
            let copy = if let Some(data) = frame.data_ref() {
                Frame::data(data.clone())
            } else if let Some(trailers) = frame.trailers_ref() {
                Frame::trailers(trailers.clone())
            } else {
                return true;
            };
            let weight = weight(&copy);
            if feed.lag.fetch_add(weight, Ordering::AcqRel) + weight > MIRROR_LAG_BYTES {
                feed.abandoned.store(true, Ordering::Release);
                return false;
            }
            // A closed channel: the mirror went away; stop copying to it.
            feed.frames.send(copy).is_ok()
        });
    }

    fn abandon_all(&mut self) {
        for feed in self.feeds.drain(..) {
            feed.abandoned.store(true, Ordering::Release);
        }
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.copy_out(frame);
                // hyper stops polling once the body says it ended (after the last
                // Content-Length byte or END_STREAM): end the copies cleanly now.
                if self.inner.is_end_stream() {
                    self.feeds.clear();
                }
            }
            Poll::Ready(Some(Err(_))) => self.abandon_all(),
            // The end: dropping the senders ends each mirror's body cleanly.
            Poll::Ready(None) => self.feeds.clear(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        // Dropped before its end (the primary gave up): the copies are incomplete.
        if !self.feeds.is_empty() {
            for feed in &self.feeds {
                feed.abandoned.store(true, Ordering::Release);
            }
        }
    }
}

// === impl MirrorBody ===

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                self.lag.fetch_sub(weight(&frame), Ordering::AcqRel);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) if self.abandoned.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err(Box::new(MirrorBodyError::Abandoned(
                    "the mirror fell behind the primary, or the client's body failed",
                )))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_closed() && self.frames.is_empty() && !self.abandoned.load(Ordering::Acquire)
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn every_mirror_gets_the_whole_body() {
        let (tee, mirrors) = Tee::new(Full::new(Bytes::from_static(b"hello")), 2);
        let primary = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&primary[..], b"hello");
        for mirror in mirrors {
            assert_eq!(&mirror.collect().await.unwrap().to_bytes()[..], b"hello");
        }
    }

    #[tokio::test]
    async fn a_body_that_says_it_ended_ends_the_mirrors_cleanly_without_a_last_poll() {
        // As hyper does: poll until is_end_stream(), then drop the body.
        let (mut tee, mut mirrors) = Tee::new(Full::new(Bytes::from_static(b"all")), 1);
        let frame = tee.frame().await.unwrap().unwrap();
        assert!(tee.is_end_stream());
        drop((frame, tee));
        let copy = mirrors.pop().unwrap().collect().await.expect("a clean end");
        assert_eq!(&copy.to_bytes()[..], b"all");
        // No body at all: the copy is empty and ends cleanly, never polled.
        let (tee, mut mirrors) = Tee::new(http_body_util::Empty::<Bytes>::new(), 1);
        drop(tee);
        let mirror = mirrors.pop().unwrap();
        assert!(mirror.is_end_stream());
        assert!(mirror.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn a_mirror_that_falls_behind_is_abandoned_not_truncated() {
        let frames = MIRROR_LAG_BYTES / 1000 + 5;
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..frames)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 1000]))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let (tee, mut mirrors) = Tee::new(body, 1);
        // The primary reads everything before the mirror reads anything.
        let primary = tee.collect().await.unwrap().to_bytes();
        assert_eq!(primary.len(), frames * 1000);
        let error = mirrors
            .pop()
            .unwrap()
            .collect()
            .await
            .expect_err("the mirror's body must fail, not end short");
        assert!(error.to_string().contains("abandoned"), "{error}");
    }

    #[tokio::test]
    async fn a_primary_dropped_midway_aborts_the_mirror() {
        let (sender, receiver) = futures_channel_like();
        let (tee, mut mirrors) = Tee::new(receiver, 1);
        sender
            .try_send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .unwrap();
        let mut tee = tee;
        let first = tee.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"part"));
        drop(tee);
        let mut mirror = mirrors.pop().unwrap();
        let first = mirror.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"part"));
        assert!(mirror.frame().await.unwrap().is_err());
    }

    type Chunk = Result<Frame<Bytes>, std::convert::Infallible>;

    /// A body fed by hand: a channel's receiving end as a stream of frames.
    fn futures_channel_like() -> (
        mpsc::Sender<Chunk>,
        StreamBody<tokio_stream_like::Receiver<Chunk>>,
    ) {
        let (sender, receiver) = mpsc::channel(4);
        (
            sender,
            StreamBody::new(tokio_stream_like::Receiver(receiver)),
        )
    }

    mod tokio_stream_like {
        use std::pin::Pin;
        use std::task::{Context, Poll};

        /// An mpsc receiver as a `Stream`.
        pub struct Receiver<T>(pub tokio::sync::mpsc::Receiver<T>);

        impl<T> futures_util::Stream for Receiver<T> {
            type Item = T;
            fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
                self.0.poll_recv(cx)
            }
        }
    }
}
