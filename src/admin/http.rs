//! A small HTTP/1.1 server loop on hyper for the admin endpoints.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::hbone::server::BoxFuture;
use crate::listener::accept_until_shutdown;

/// Serves requests with `handler` until `shutdown` turns true.
pub async fn serve<F>(
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    what: &'static str,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    accept_until_shutdown(&listener, &mut shutdown, what, |stream, _| {
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(request).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, server = what, "HTTP connection ended with an error");
            }
        });
    })
    .await;
}
