//! Accepting connections for `steerlm serve`: at most `max_connections` are served at
//! once (more wait in the listen backlog until one closes), at most `max_per_client` of
//! them from one client address (more are answered 503 and closed at once), and a client
//! must finish sending each request's headers within `header_read_timeout` or its
//! connection is closed. So silent or trickling sockets cannot pile up and starve health
//! checks, and one client holding its share cannot starve the others.
//!
//! On SIGTERM or Ctrl-C (a rolling restart, `docker stop`) it drains: the listener
//! closes, every request in flight is answered, idle connections close, and the server
//! returns once all are done or `drain_timeout` has passed.

use anyhow::Result;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Most connections from one client address at once.
    pub max_per_client: usize,
    /// Also how long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Longest wait, once stopped, for the requests in flight.
    pub drain_timeout: Duration,
}

/// Open connections per client address.
#[derive(Default)]
struct Clients {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of a client; counted until dropped.
struct ClientSlot {
    clients: Arc<Clients>,
    address: IpAddr,
}

impl Clients {
    /// A slot for one more connection from `address`, unless it has `cap` open.
    fn enter(self: &Arc<Self>, address: IpAddr, cap: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot { clients: Arc::clone(self), address })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// What a client over its share of connections gets before the connection closes.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n\
    content-length: 69\r\n\r\ntoo many connections from this client (--max-connections-per-client)\n";

/// Refused connections kept open at once to read their request (see [`refuse`]).
const LINGERING_REFUSALS: usize = 64;

/// Answers 503 to a client over its share, then reads and drops what it sent for a
/// moment before closing: a socket closed with unread data is reset, and the client would
/// see the reset instead of the answer.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer_then_drain = async {
        stream.write_all(TOO_MANY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < 1 << 20 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer_then_drain).await;
}

/// Which connections are served: at most `max_connections` at once (the next is accepted
/// only when one closes) and `max_per_client` from one address (more are answered 503 and
/// closed). Shared by `serve` and `serve-component`.
pub struct Admission {
    slots: Arc<Semaphore>,
    clients: Arc<Clients>,
    refusals: Arc<Semaphore>,
    max_per_client: usize,
}

/// An admitted connection's slot and its client's place, given back when dropped.
pub struct Admitted {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _client: ClientSlot,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_client: usize) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            clients: Arc::new(Clients::default()),
            refusals: Arc::new(Semaphore::new(LINGERING_REFUSALS)),
            max_per_client: max_per_client.max(1),
        }
    }

    /// The next connection to serve: waits for a free slot before accepting, and answers
    /// a client over its share 503 (holding no slot) and goes on to the next.
    pub async fn next(
        &self,
        listener: &TcpListener,
    ) -> Result<(tokio::net::TcpStream, std::net::SocketAddr, Admitted)> {
        loop {
            let slot = Arc::clone(&self.slots).acquire_owned().await?;
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: wait and go on serving the rest.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(client) = self.clients.enter(peer.ip().to_canonical(), self.max_per_client) else {
                // Holds no slot: its own task, for at most a second, and at most
                // `LINGERING_REFUSALS` of them (a flood of refusals must not use up descriptors).
                match Arc::clone(&self.refusals).try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(async move {
                            refuse(stream).await;
                            drop(permit);
                        });
                    }
                    // Into the empty send buffer of a new socket, or not at all: never waited on.
                    Err(_) => drop(stream.try_write(TOO_MANY)),
                }
                continue;
            };
            return Ok((stream, peer, Admitted { _slot: slot, _client: client }));
        }
    }
}

/// Serves `app` on `listener` until SIGTERM, SIGINT or SIGHUP, then drains (see the
/// module's notes).
pub async fn serve(listener: TcpListener, app: Router, limits: ConnectionLimits) -> Result<()> {
    let stop = Arc::new(Notify::new());
    let signal = Arc::clone(&stop);
    crate::output::on_interrupt_stop(move || signal.notify_one());
    let admission = Admission::new(limits.max_connections, limits.max_per_client);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _, admitted) = tokio::select! {
            () = stop.notified() => break,
            next = admission.next(&listener) => next?,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            // A client hanging up or timing out is its own business, not an error of ours.
            let _ = watched.await;
            drop(admitted);
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        eprintln!(
            "stopping: answering the requests in flight on {open} connection(s), for at most {} s \
             (--drain-timeout; signal again to stop at once)",
            limits.drain_timeout.as_secs()
        );
    }
    match tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await {
        Ok(()) => eprintln!("stopped"),
        Err(_) => {
            eprintln!("stopped with requests unanswered after {} s (--drain-timeout)", limits.drain_timeout.as_secs())
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_503_answer_is_well_formed() {
        let text = std::str::from_utf8(TOO_MANY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
    }

    #[test]
    fn a_client_gets_its_share_and_its_slots_come_back() {
        let clients = Arc::new(Clients::default());
        let (one, two): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = clients.enter(one, 2).unwrap();
        let _second = clients.enter(one, 2).unwrap();
        assert!(clients.enter(one, 2).is_none());
        assert!(clients.enter(two, 2).is_some(), "another client is not held to the first one's share");
        drop(first);
        assert!(clients.enter(one, 2).is_some());
    }
}
