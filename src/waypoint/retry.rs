//! When the waypoint tries a failed request again, and how long it waits first.
//!
//! A [`RetryPolicy`] comes from an HTTPRoute rule's `retry` (GEP-1731) or, for a request
//! whose rule has none, from the mesh default: one retry of a connect failure or refused
//! stream (the request never reached the application, so any method is safe), and of a
//! 503 for idempotent methods only. A route's `retry` replaces the default entirely.
//!
//! What counts as a failure is a [`Failure`]; the proxy asks [`RetryPolicy::retries`]
//! about each one, waits [`RetryPolicy::backoff`], and checks the body can be replayed
//! ([`super::replay_body`]) and the retry budget allows it ([`super::retry_budget`]) before
//! it sends the request again, to another endpoint where there is one.

use std::error::Error as _;
use std::time::Duration;

use http::Method;

use super::upstream::UpstreamError;
use crate::model::http_route_rules::{HttpRouteRetry, DEFAULT_RETRY_BACKOFF};

/// Backoff grows to at most this many times the route's minimum.
const BACKOFF_CAP_FACTOR: u32 = 10;

/// Why one attempt did not give an answer to pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection could be made (TCP or HBONE): the request was never sent.
    Connect,
    /// The HTTP/2 upstream refused the stream: it did not process the request.
    RefusedStream,
    /// The exchange broke after the request may have reached the application (reset,
    /// closed, malformed response).
    Exchange,
    /// The attempt's `timeouts.backendRequest` ran out.
    AttemptTimeout,
    /// The circuit breaker turned it away: never retried (a retry would add load to a
    /// saturated backend).
    Overflow,
}

// === impl Failure ===

impl Failure {
    /// How an upstream error counts.
    pub fn of_error(error: &UpstreamError) -> Self {
        match error {
            UpstreamError::Hbone { .. } | UpstreamError::Connect { .. } => Failure::Connect,
            UpstreamError::Http { source, .. } if is_refused_stream(source) => {
                Failure::RefusedStream
            }
            UpstreamError::Http { source, .. } if source.is_canceled() => Failure::Connect,
            UpstreamError::Overflow(_) => Failure::Overflow,
            _ => Failure::Exchange,
        }
    }

    /// The `reason` label of the retries metric.
    pub fn label(&self) -> String {
        match self {
            Failure::Status(code) => code.to_string(),
            Failure::Connect => "connect-failure".into(),
            Failure::RefusedStream => "refused-stream".into(),
            Failure::Exchange => "reset".into(),
            Failure::AttemptTimeout => "backend-timeout".into(),
            Failure::Overflow => "overflow".into(),
        }
    }
}

/// Whether an HTTP/2 error is the peer's `REFUSED_STREAM` (RFC 9113 8.7: not processed).
fn is_refused_stream(error: &hyper::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = cause.source();
    }
    false
}

/// Which failures of a request are retried, how many times, how far apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Response statuses that are retried.
    codes: Vec<u16>,
    /// Retries after the first attempt.
    attempts: u32,
    /// The least wait before the first retry.
    backoff: Duration,
    /// Retry statuses of idempotent methods only (the mesh default).
    idempotent_statuses_only: bool,
    /// Also retry broken exchanges and attempt timeouts (a route's `retry`).
    broken_exchanges: bool,
    /// `route` or `default`, for logs.
    source: &'static str,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// A rule's `retry`: its codes, connection errors, and attempts that ran out of
    /// `timeouts.backendRequest`, for every method.
    pub fn from_route(retry: &HttpRouteRetry) -> Self {
        RetryPolicy {
            codes: retry.codes(),
            attempts: retry.attempts(),
            backoff: retry.backoff(),
            idempotent_statuses_only: false,
            broken_exchanges: true,
            source: "route",
        }
    }

    /// The mesh default: `attempts` retries (0: none) of connect failures and refused
    /// streams, and of 503 for idempotent methods.
    pub fn mesh_default(attempts: u32) -> Self {
        RetryPolicy {
            codes: vec![503],
            attempts,
            backoff: DEFAULT_RETRY_BACKOFF,
            idempotent_statuses_only: true,
            broken_exchanges: false,
            source: "default",
        }
    }

    /// How many retries at most.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// `route` or `default`.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Whether the policy could retry `method` at all (so its body must be kept).
    pub fn may_retry(&self, method: &Method) -> bool {
        self.attempts > 0 && (!self.idempotent_statuses_only || is_idempotent(method))
    }

    /// Whether a response with `status` is a failure to retry (for `method`).
    pub fn retries_status(&self, method: &Method, status: u16) -> bool {
        self.retries(method, Failure::Status(status))
    }

    /// Whether `failure` of a `method` request is retried (attempts and budget aside).
    pub fn retries(&self, method: &Method, failure: Failure) -> bool {
        if self.attempts == 0 {
            return false;
        }
        match failure {
            Failure::Connect | Failure::RefusedStream => true,
            Failure::Status(code) => {
                self.codes.contains(&code)
                    && (!self.idempotent_statuses_only || is_idempotent(method))
            }
            Failure::Exchange | Failure::AttemptTimeout => self.broken_exchanges,
            Failure::Overflow => false,
        }
    }

    /// The wait before retry number `retry` (1 for the first): the minimum doubled per
    /// retry, capped at ten times the minimum, plus up to half again as jitter (`jitter`
    /// uniform in [0, 1)), so retries of many requests spread out and none comes sooner
    /// than the minimum.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let doublings = retry.saturating_sub(1).min(16);
        let grown = self.backoff.saturating_mul(1u32 << doublings);
        let capped = grown.min(self.backoff.saturating_mul(BACKOFF_CAP_FACTOR));
        capped + capped.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// RFC 9110 9.2.2: methods whose repetition has the effect of one request.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(codes: &[i64], attempts: i64, backoff: &str) -> RetryPolicy {
        RetryPolicy::from_route(&HttpRouteRetry {
            codes: codes.to_vec(),
            attempts: Some(attempts),
            backoff: Some(backoff.into()),
        })
    }

    #[test]
    fn the_default_retries_503_of_idempotent_methods_and_connect_failures_of_any() {
        let default = RetryPolicy::mesh_default(1);
        assert!(default.retries(&Method::GET, Failure::Status(503)));
        assert!(!default.retries(&Method::POST, Failure::Status(503)));
        assert!(!default.retries(&Method::GET, Failure::Status(500)));
        assert!(default.retries(&Method::POST, Failure::Connect));
        assert!(default.retries(&Method::POST, Failure::RefusedStream));
        assert!(!default.retries(&Method::GET, Failure::Exchange));
        assert!(!default.retries(&Method::GET, Failure::AttemptTimeout));
        assert!(default.may_retry(&Method::GET) && !default.may_retry(&Method::POST));
        let off = RetryPolicy::mesh_default(0);
        assert!(!off.retries(&Method::GET, Failure::Connect));
        assert!(!off.may_retry(&Method::GET));
    }

    #[test]
    fn a_route_retries_its_codes_and_broken_exchanges_for_every_method() {
        let policy = route(&[500, 502], 3, "10ms");
        assert!(policy.retries(&Method::POST, Failure::Status(500)));
        assert!(!policy.retries(&Method::GET, Failure::Status(503)));
        assert!(policy.retries(&Method::POST, Failure::Exchange));
        assert!(policy.retries(&Method::GET, Failure::AttemptTimeout));
        assert!(policy.may_retry(&Method::POST));
        assert!(!route(&[500], 0, "10ms").retries(&Method::GET, Failure::Status(500)));
    }

    #[test]
    fn backoff_doubles_from_the_minimum_is_capped_and_never_shorter() {
        let policy = route(&[503], 5, "100ms");
        let ms = |retry, jitter| policy.backoff(retry, jitter).as_millis();
        assert_eq!((ms(1, 0.0), ms(2, 0.0), ms(3, 0.0)), (100, 200, 400));
        assert_eq!(ms(5, 0.0), 1000, "capped at ten times the minimum");
        assert_eq!(ms(30, 0.0), 1000);
        assert_eq!(ms(1, 0.999), 149);
        for i in 0..100 {
            let wait = policy.backoff(1, f64::from(i) / 100.0);
            assert!(wait >= Duration::from_millis(100) && wait < Duration::from_millis(150));
        }
    }
}
