//! Accepting connections for `steerlm serve`: at most `max_connections` are served at
//! once (more wait in the listen backlog until one closes), and a client must finish
//! sending each request's headers within `header_read_timeout` or its connection is
//! closed, so silent or trickling sockets cannot pile up and starve health checks.

use anyhow::Result;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Also how long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` forever.
pub async fn serve(listener: TcpListener, app: Router, limits: ConnectionLimits) -> Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: wait and go on serving the rest.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            // A client hanging up or timing out is its own business, not an error of ours.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}
