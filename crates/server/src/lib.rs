//! The AetherFlow REST server: a thin HTTP layer over [`aetherflow_vm::VirtualMemory`].
//!
//! | module | idea |
//! |---|---|
//! | [`serve`] (here) | the accept loop: header timeouts, graceful shutdown |
//! | [`app`] (here) | the router with its middleware |
//! | `routes` | one module per group of endpoints; the OpenAPI document comes from them |
//! | `error` | `ApiError`: the JSON error body and the one status mapping |
//! | `stream` | async bodies ⇄ the manager's blocking readers and writers, in bounded memory |
//! | `auth`, `metrics` | bearer tokens; Prometheus counters and one log line per request |
//! | [`nbd`] | volumes as NBD exports, for [`serve_nbd`] |
//!
//! Tests start the server with [`serve`] on port 0, exactly as the binary does.

mod auth;
pub mod error;
mod metrics;
pub mod nbd;
pub mod routes;
mod state;
pub mod stream;

use std::future::Future;
use std::io;

use axum::middleware;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeoutLayer;

pub use metrics::Metrics;
pub use state::{AppState, ServerConfig};

/// The whole application: routes, fallback, token check, metrics, body timeout.
pub fn app(state: AppState) -> Router {
    let (routes, _) = routes::routes();
    routes
        .fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NO_SUCH_ROUTE",
                "no such route: see /openapi.json",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(RequestBodyTimeoutLayer::new(state.config.body_timeout))
        .with_state(state)
}

/// Serves the volumes of `state` over NBD on `listener` until `shutdown` turns true; then
/// lets connections finish what is in flight (answering new requests `ESHUTDOWN`) and returns
/// once every volume they opened is written back.
pub async fn serve_nbd(
    listener: TcpListener,
    state: AppState,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> io::Result<()> {
    let exports = std::sync::Arc::new(nbd::VolumeExports::new(std::sync::Arc::clone(&state.vm)));
    let observer =
        std::sync::Arc::new(nbd::NbdObserver::new(std::sync::Arc::clone(&state.metrics)));
    let limits = aetherflow_nbd::Limits {
        shutdown_grace: state.config.shutdown_grace,
        ..aetherflow_nbd::Limits::default()
    };
    aetherflow_nbd::serve(listener, exports, observer, limits, shutdown).await
}

/// Serves `state` on `listener` until `shutdown` completes; then stops accepting, lets requests
/// in flight finish (up to the configured grace), and returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = app(state.clone());
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors and the like: wait a moment rather than spin.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(state.config.shutdown_grace) => {
            tracing::warn!("requests still running after {:?}; stopping anyway", state.config.shutdown_grace);
        }
    }
    Ok(())
}
