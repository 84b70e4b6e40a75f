//! A request body that can be sent again: what a retry needs.
//!
//! [`replayable`] wraps the client's body: the first attempt reads it as it arrives, and
//! every chunk is kept (up to a limit) so [`Replay::next`] can hand the next attempt a
//! body that yields the kept chunks first, then the rest as the client sends it. Only the newest attempt may read: an older one that is still being polled ends
//! with an error, so two upstreams never split one body.
//!
//! A body larger than the limit stops being kept the moment it passes it; it still
//! streams to the attempt reading it, but can no longer be replayed, and the proxy says so
//! with response flag `RBS` instead of retrying.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use super::upstream::{BodyError, ProxyBody};

/// Request body bytes kept for retries (linkerd2-proxy and Envoy keep 64 KiB too).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Why a replayable body's attempt could not read.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A newer attempt took the body over.
    #[error("the request body was handed to a retry")]
    Superseded,
    /// The client's body failed earlier, while another attempt read it.
    #[error("the request body failed: {0}")]
    Failed(String),
}

struct Shared {
    /// The client's body, until it has ended.
    inner: Option<ProxyBody>,
    /// Data chunks read so far, while they fit in the limit.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    limit: usize,
    /// More than `limit` was read: `kept` is empty and replay impossible.
    overflowed: bool,
    /// The body's trailers, once read.
    trailers: Option<HeaderMap>,
    /// The body ended (after `kept` and `trailers`).
    ended: bool,
    /// The client's body failed with this.
    failed: Option<String>,
    /// The newest attempt; older ones may no longer read.
    generation: u64,
}

/// Makes the bodies of a request's later attempts.
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

/// `inner` made replayable, keeping up to `limit` bytes: the maker of later attempts'
/// bodies, and the first attempt's.
pub fn replayable(inner: ProxyBody, limit: usize) -> (Replay, ReplayBody) {
    let ended = inner.is_end_stream();
    let shared = Arc::new(Mutex::new(Shared {
        inner: (!ended).then_some(inner),
        kept: Vec::new(),
        kept_bytes: 0,
        limit,
        overflowed: false,
        trailers: None,
        ended,
        failed: None,
        generation: 0,
    }));
    let first = ReplayBody {
        shared: shared.clone(),
        generation: 0,
        position: 0,
        trailers_sent: false,
    };
    (Replay { shared }, first)
}

/// Why a body cannot be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReplay {
    /// It outgrew the limit.
    TooLarge,
    /// The client's body failed.
    Failed,
}

// === impl Replay ===

impl Replay {
    /// Whether [`Replay::next`] would give a body, without taking it from the current
    /// attempt.
    pub fn check(&self) -> Result<(), NoReplay> {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.overflowed {
            Err(NoReplay::TooLarge)
        } else if shared.failed.is_some() {
            Err(NoReplay::Failed)
        } else {
            Ok(())
        }
    }

    /// The next attempt's body (earlier attempts stop reading), or `None` when the body
    /// has outgrown the limit or failed.
    pub fn next(&self) -> Option<ReplayBody> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.overflowed || shared.failed.is_some() {
            return None;
        }
        shared.generation += 1;
        Some(ReplayBody {
            shared: self.shared.clone(),
            generation: shared.generation,
            position: 0,
            trailers_sent: false,
        })
    }
}

/// One attempt's view of a replayable request body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// The next kept chunk to yield.
    position: usize,
    trailers_sent: bool,
}

// === impl ReplayBody ===

impl ReplayBody {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap_or_else(|e| e.into_inner());
        if shared.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Superseded))));
        }
        if let Some(chunk) = shared.kept.get(this.position) {
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        if shared.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            return Poll::Ready(None);
        }
        if let Some(failed) = &shared.failed {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Failed(failed.clone())))));
        }
        let Some(inner) = shared.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let end_now = shared.inner.as_ref().is_none_or(Body::is_end_stream);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                shared.ended = true;
                shared.inner = None;
                // An earlier attempt may have read the trailers before the end was known.
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(trailers) = shared.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                shared.failed = Some(error.to_string());
                shared.inner = None;
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !shared.overflowed {
                        shared.kept_bytes += data.len();
                        if shared.kept_bytes > shared.limit {
                            shared.overflowed = true;
                            shared.kept = Vec::new();
                            this.position = 0;
                        } else {
                            shared.kept.push(data.clone());
                            this.position += 1;
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                }
                if end_now {
                    // Nothing follows this frame: no trailers are still to come.
                    shared.ended = true;
                    shared.inner = None;
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = self.lock();
        shared.generation == self.generation
            && shared.ended
            && self.position >= shared.kept.len()
            && (self.trailers_sent || shared.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let shared = self.lock();
        let kept: u64 = shared
            .kept
            .iter()
            .skip(self.position)
            .map(|c| c.len() as u64)
            .sum();
        let mut hint = match &shared.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        };
        // Upper first: a lower bound above the upper one panics.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + kept);
        }
        hint.set_lower(hint.lower() + kept);
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn streamed(chunks: &[&'static str], trailers: bool) -> ProxyBody {
        let mut frames: Vec<Result<Frame<Bytes>, BodyError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailers {
            let mut map = HeaderMap::new();
            map.insert("grpc-status", "0".parse().unwrap());
            frames.push(Ok(Frame::trailers(map)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn read(body: ReplayBody) -> (String, bool) {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().is_some();
        (
            String::from_utf8(collected.to_bytes().to_vec()).unwrap(),
            trailers,
        )
    }

    #[tokio::test]
    async fn a_replay_yields_the_whole_body_again_with_trailers() {
        // The first attempt reads it all; the replay gets it all again.
        let (replay, first) = replayable(streamed(&["ab", "cd"], true), 1024);
        assert_eq!(read(first).await, ("abcd".to_owned(), true));
        let second = replay.next().unwrap();
        assert!(!second.is_end_stream());
        assert_eq!(second.size_hint().exact(), Some(4));
        assert_eq!(read(second).await, ("abcd".to_owned(), true));
        // Superseded before reading: the replay reads from the client.
        let (replay, _first) = replayable(streamed(&["ab", "cd", "ef"], true), 1024);
        let (text, trailers) = read(replay.next().unwrap()).await;
        assert_eq!((text.as_str(), trailers), ("abcdef", true));
    }

    #[tokio::test]
    async fn a_partly_read_body_replays_what_was_read_then_the_rest() {
        let (replay, mut first) = replayable(streamed(&["ab", "cd", "ef"], false), 1024);
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        let mut second = replay.next().unwrap();
        assert!(
            first.frame().await.unwrap().is_err(),
            "the old attempt is cut off"
        );
        assert_eq!(second.size_hint().lower(), 2, "the kept chunk counts");
        let (text, _) = read(replay.next().unwrap()).await;
        assert_eq!(text, "abcdef");
        assert!(second.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_but_cannot_be_replayed() {
        let (replay, first) = replayable(streamed(&["abcd", "efgh", "ij"], false), 6);
        let (text, _) = read(first).await;
        assert_eq!(text, "abcdefghij", "the attempt reading it gets all of it");
        assert!(replay.next().is_none(), "over the limit: no replay");
        assert_eq!(replay.check(), Err(NoReplay::TooLarge));
        let (replay, first) = replayable(streamed(&["abcd", "ef"], false), 6);
        read(first).await;
        assert_eq!(replay.check(), Ok(()), "checking takes nothing");
        assert_eq!(
            read(replay.next().unwrap()).await.0,
            "abcdef",
            "at the limit: kept"
        );
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once_and_replays_empty() {
        let empty = http_body_util::Empty::new().map_err(|n| match n {}).boxed();
        let (replay, first) = replayable(empty, 16);
        assert!(first.is_end_stream());
        let second = replay.next().unwrap();
        assert!(second.is_end_stream());
        assert_eq!(second.size_hint().exact(), Some(0));
        assert_eq!(read(second).await.0, "");
    }
}
