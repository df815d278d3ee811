//! The `/metrics` endpoint: HTTP/1.1 (hyper) on the daemon's runtime.
//!
//! Only `GET` (and `HEAD`) of `/metrics` answers; any other path is 404,
//! another method on it 405. A scrape reads the state directories and the
//! cache on the blocking pool. Metrics are off unless asked for; binding an
//! address other than loopback is the operator's choice, and is logged as
//! a warning at start: anyone who can reach it sees the consumers' names
//! and the counts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{Layout, METRICS};

/// The content type of Prometheus's text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The layout scrapes read, replaced by a reload.
type SharedLayout = Arc<RwLock<Arc<Layout>>>;

/// The endpoint being served; dropping it stops the listener (a scrape
/// under way finishes).
#[derive(Debug)]
pub struct Served {
    /// The address as asked for (port 0 stays 0).
    pub address: SocketAddr,
    layout: SharedLayout,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Stop serving: once this returns, the address is closed.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Scrapes read `layout` from now on.
    pub fn set_layout(&self, layout: Layout) {
        *self.layout.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(layout);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind `address` and serve `/metrics` from a task on the current runtime,
/// until the returned value is dropped.
pub async fn start(address: SocketAddr, layout: Layout) -> std::io::Result<Served> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    if !address.ip().is_loopback() {
        tracing::warn!(address = %bound, "metrics are served on an address other hosts may reach");
    }
    tracing::info!(address = %bound, "serving metrics at http://{bound}/metrics");
    let layout = Arc::new(RwLock::new(Arc::new(layout)));
    let task = tokio::spawn(accept(listener, Arc::clone(&layout)));
    Ok(Served {
        address,
        layout,
        task,
    })
}

async fn accept(listener: TcpListener, layout: SharedLayout) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: let some close first.
                tracing::warn!("cannot accept a metrics connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let layout = Arc::clone(&layout);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| answer(request, Arc::clone(&layout)));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    layout: SharedLayout,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found: only /metrics is served\n",
        ));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        let allow = hyper::header::HeaderValue::from_static("GET, HEAD");
        response.headers_mut().insert(hyper::header::ALLOW, allow);
        return Ok(response);
    }
    let layout = Arc::clone(&layout.read().unwrap_or_else(PoisonError::into_inner));
    let text = tokio::task::spawn_blocking(move || METRICS.scrape(&layout)).await;
    Ok(match text {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            let content_type = hyper::header::HeaderValue::from_static(CONTENT_TYPE);
            let headers = response.headers_mut();
            headers.insert(hyper::header::CONTENT_TYPE, content_type);
            response
        }
        Err(e) => {
            tracing::error!("the metrics scrape failed: {e}");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "the scrape failed\n")
        }
    })
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
