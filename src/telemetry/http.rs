//! The operator's endpoint on `--metrics-addr`: `/metrics` (Prometheus text format, from the
//! `metrics-exporter-prometheus` recorder), `/healthz` (the process is alive and serving) and
//! `/readyz` (SQS and PostgreSQL answer, and the run is not shutting down). Plain HTTP/1.1 on
//! hyper; nothing here ever carries message content.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::{BATCH_MESSAGES, BATCH_MESSAGES_BUCKETS, LOAD_SECONDS, LOAD_SECONDS_BUCKETS};

/// Checks that the run's dependencies answer; `Err` says which does not and why.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Longest a `/readyz` check may take before it counts as not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(3);
/// How often histograms are folded (the exporter needs this when it serves no HTTP itself).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's global one (once per process).
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(BATCH_MESSAGES.to_owned()),
            &BATCH_MESSAGES_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(LOAD_SECONDS.to_owned()),
                &LOAD_SECONDS_BUCKETS,
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
        .inspect(|_| super::metrics::describe())
}

/// Binds the endpoint's address (at start-up, so a taken or wrong address fails early).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` is cancelled. `shutting_down` makes `/readyz` answer 503 at once.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: ReadyCheck,
    shutting_down: CancellationToken,
    stop: CancellationToken,
) {
    let upkeep = {
        let handle = handle.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        })
    };
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    continue;
                }
            },
        };
        let (handle, ready, shutting_down) = (handle.clone(), ready.clone(), shutting_down.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                route(
                    request,
                    handle.clone(),
                    ready.clone(),
                    shutting_down.clone(),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    let _ = upkeep.await;
}

async fn route(
    request: Request<Incoming>,
    handle: PrometheusHandle,
    ready: ReadyCheck,
    shutting_down: CancellationToken,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        Ok(response)
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET {
        return answer(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => answer(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        "/healthz" => answer(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if shutting_down.is_cancelled() => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "shutting down\n".into(),
        ),
        "/readyz" => match tokio::time::timeout(READY_TIMEOUT, ready()).await {
            Ok(Ok(())) => answer(StatusCode::OK, TEXT, "ready\n".into()),
            Ok(Err(why)) => answer(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
            Err(_) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("no answer within {READY_TIMEOUT:?}\n"),
            ),
        },
        _ => answer(
            StatusCode::NOT_FOUND,
            TEXT,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
