//! `steerlm serve-component`: the embedded HTTP component (`components/http`, a
//! `wasi:http/handler@0.3.0` service built with spin-sdk) served by wasmtime.
//!
//! Every request gets a fresh instance in a fresh store, so no request can see
//! another's memory. The sandbox is the other components': no files, no network
//! (outgoing HTTP is refused), no environment but the two limits the component reads,
//! a memory limit and a wall-clock deadline. Oversized bodies are refused here before
//! any instance is made; the component checks again while reading (for chunked
//! bodies) and after gunzipping.

use crate::sandbox::{
    HasMemoryLimiter, Kind, MemoryLimiter, closed_store, closed_wasi, load_component, sandbox_engine,
};
use crate::serve::connections::Admission;
use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// How `serve-component` listens and what each request may use.
#[derive(Clone, Debug)]
pub struct ServeComponentOptions {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Largest request body, before and after gzip decoding (413 past it).
    pub max_body_bytes: usize,
    /// Largest response body (413 past it).
    pub max_response_bytes: usize,
    /// Requests handled at once; more wait their turn (`GET /health` never waits).
    pub max_concurrent_requests: usize,
    /// Connections served at once, and from one client address (see `serve`'s).
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Requests one client address may have handled at once (more wait their turn).
    pub max_requests_per_client: usize,
    /// Time a client has to send a whole request body once its request is taken.
    pub body_read_timeout: Duration,
    /// Memory and time of each request's instance.
    pub limits: RequestLimits,
    /// Print nothing but errors.
    pub quiet: bool,
}

/// Memory and time each request's instance may use (the global sandbox flags).
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub memory_bytes: usize,
    pub timeout: Duration,
}

/// Serves the HTTP component until the process is stopped.
pub async fn serve(options: ServeComponentOptions) -> Result<()> {
    let server = Arc::new(Server::new(&options)?);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let bound = listener.local_addr()?;
    if !options.quiet {
        crate::output::print_banner(&format!(
            "serving the steerlm HTTP component on http://{bound} (a fresh instance per request)\n"
        ));
    }
    // The same admission as `serve`: idle sockets cannot use up the process's descriptors.
    let admission = Admission::new(options.max_connections, options.max_connections_per_client);
    loop {
        let (stream, peer, admitted) = admission.next(&listener).await?;
        let _ = stream.set_nodelay(true);
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let server = Arc::clone(&server);
                async move { Ok::<_, Infallible>(server.handle(request, peer.ip().to_canonical()).await) }
            });
            // A client hanging up mid-request is its own business, not an error of ours.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(admitted);
        });
    }
}

/// Each client address's share of the request slots: its requests past the share wait
/// for one of its own to finish, holding no slot meanwhile.
struct ClientShares {
    share: usize,
    /// Per client: its share's semaphore, and how many of its requests hold or wait for
    /// a place (the entry goes when that reaches 0).
    by_client: std::sync::Mutex<HashMap<IpAddr, (Arc<Semaphore>, usize)>>,
}

/// One request's place (or wait for one) in its client's share, given back when dropped.
struct ClientShare {
    shares: Arc<ClientShares>,
    client: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
}

impl ClientShares {
    fn new(share: usize) -> Self {
        ClientShares { share: share.max(1), by_client: Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Arc<Semaphore>, usize)>> {
        self.by_client.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn acquire(shares: &Arc<Self>, client: IpAddr) -> ClientShare {
        let semaphore = {
            let mut by_client = shares.lock();
            let (semaphore, users) =
                by_client.entry(client).or_insert_with(|| (Arc::new(Semaphore::new(shares.share)), 0));
            *users += 1;
            Arc::clone(semaphore)
        };
        // Counted before waiting: a request dropped while it waits (its client hung up)
        // is uncounted by the share's drop.
        let mut share = ClientShare { shares: Arc::clone(shares), client, permit: None };
        share.permit = Some(semaphore.acquire_owned().await.expect("a client's semaphore is never closed"));
        share
    }
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut by_client = self.shares.lock();
        self.permit.take();
        if let Some((_, users)) = by_client.get_mut(&self.client) {
            *users -= 1;
            if *users == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The listening side: admission (concurrency, body size) in front of the handler.
/// `GET /health` requests served at once, apart from the request slots.
const HEALTH_CHECKS_AT_ONCE: usize = 4;

struct Server {
    handler: ProxyHandler<Instantiator>,
    permits: Arc<Semaphore>,
    /// Separate slots for health checks (see [`HEALTH_CHECKS_AT_ONCE`]).
    health_permits: Arc<Semaphore>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    shares: Arc<ClientShares>,
}

impl Server {
    fn new(options: &ServeComponentOptions) -> Result<Self> {
        let engine = sandbox_engine(|config| {
            config.wasm_component_model_async(true);
        })?;
        let mut linker = Linker::new(&engine);
        link_wasi(&mut linker).map_err(anyhow::Error::from).context("linking WASI")?;
        let component = load_component(&engine, Kind::Http)?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(ServicePre::new)
            .map_err(anyhow::Error::from)
            .context("preparing the HTTP component")?;
        let max_body_bytes = options.max_body_bytes;
        let instantiator = Instantiator {
            engine: engine.clone(),
            pre: ProxyPre::P3(pre),
            limits: options.limits,
            environment: vec![
                ("STEERLM_MAX_BODY_BYTES".into(), max_body_bytes.to_string()),
                ("STEERLM_MAX_RESPONSE_BYTES".into(), options.max_response_bytes.to_string()),
            ],
        };
        Ok(Server {
            handler: ProxyHandler::new(instantiator),
            permits: Arc::new(Semaphore::new(options.max_concurrent_requests.max(1))),
            health_permits: Arc::new(Semaphore::new(HEALTH_CHECKS_AT_ONCE)),
            max_body_bytes,
            body_read_timeout: options.body_read_timeout,
            shares: Arc::new(ClientShares::new(options.max_requests_per_client)),
        })
    }

    async fn handle(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
        client: IpAddr,
    ) -> hyper::Response<WasiBody> {
        // Health checks have slots of their own: they must answer while every request
        // slot is busy, and a flood of them must not start unbounded instances either.
        let is_health_check = request.method() == hyper::Method::GET && request.uri().path() == "/health";
        // A client's share of the request slots, taken before one: slow bodies from one
        // client (each holds its slot up to --body-read-timeout) cannot hold them all.
        let share = if is_health_check { None } else { Some(ClientShares::acquire(&self.shares, client).await) };
        let slots = if is_health_check { &self.health_permits } else { &self.permits };
        let Ok(permit) = Arc::clone(slots).acquire_owned().await else {
            return error_response(503, "the server is shutting down".into());
        };
        let permit = Some((permit, share));
        let declared = request
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body_bytes as u64) {
            return error_response(
                413,
                format!(
                    "the request body is larger than the limit of {} bytes; send fewer records per request",
                    self.max_body_bytes
                ),
            );
        }
        // The deadline starts once the request has its slot: waiting for one is not the client's doing.
        let body_deadline = BodyDeadline::new(self.body_read_timeout);
        let request =
            request.map(|body| DeadlineBody { body, deadline: body_deadline.clone(), sleep: None }.boxed_unsync());
        let outcome = self.handler.handle((), request).await;
        if body_deadline.passed() {
            // The component saw its body fail; the client is told why.
            return error_response(
                408,
                format!(
                    "the request body did not arrive within {} seconds (--body-read-timeout)",
                    self.body_read_timeout.as_secs()
                ),
            );
        }
        match outcome {
            // The instance lives on while its body is sent, so the permit goes with the body.
            Ok(response) => response.map(|body| PermitBody { body, _permit: permit }.boxed_unsync()),
            Err(e) => error_response(500, explain(&e)),
        }
    }
}

/// When a request's body must have arrived, and whether a read ran past it.
#[derive(Clone)]
struct BodyDeadline {
    at: tokio::time::Instant,
    passed: Arc<std::sync::atomic::AtomicBool>,
}

impl BodyDeadline {
    fn new(timeout: Duration) -> Self {
        BodyDeadline { at: tokio::time::Instant::now() + timeout, passed: Arc::default() }
    }

    fn passed(&self) -> bool {
        self.passed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A request body that fails once its [`BodyDeadline`] passes before its end.
struct DeadlineBody {
    body: hyper::body::Incoming,
    deadline: BodyDeadline,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(wasmtime_wasi_http::Error::from)));
        }
        let deadline = this.deadline.at;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.deadline.passed.store(true, std::sync::atomic::Ordering::Relaxed);
            return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response body that holds its request's concurrency permit until it has been sent
/// (or the client hung up).
struct PermitBody {
    body: WasiBody,
    _permit: Option<(OwnedSemaphorePermit, Option<ClientShare>)>,
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Why a request produced no response, for the client. A trap does not say which
/// limit caused it, so the message names both.
fn explain(e: &wasmtime::Error) -> String {
    if e.downcast_ref::<wasmtime_wasi_http::handler::ExpirationError>().is_some() {
        return "the request ran longer than the component's time limit (--component-timeout)".into();
    }
    if e.downcast_ref::<wasmtime_wasi_http::handler::TrapOrPanicError>().is_some() {
        return "the component stopped before answering: it reached its memory limit (--component-memory-mb) \
                or its time limit (--component-timeout)"
            .into();
    }
    format!("the component failed: {e:#}")
}

fn error_response(status: u16, message: String) -> hyper::Response<WasiBody> {
    let body = format!("{}\n", serde_json::json!({ "error": message, "line": null }));
    let mut response =
        hyper::Response::new(Full::new(Bytes::from(body)).map_err(|never: Infallible| match never {}).boxed_unsync());
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// The imports the component may use: WASI 0.2 and 0.3 (closed by [`RequestState`]'s
/// context) and `wasi:http` 0.3 types.
fn link_wasi(linker: &mut Linker<RequestState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi::p3::add_to_linker(linker)?;
    wasmtime_wasi_http::p3::add_to_linker(linker)
}

/// One request's store data.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: NoOutgoingHttp,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl HasMemoryLimiter for RequestState {
    fn memory_limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
}

/// The sandbox grants no network: every outgoing request is denied.
struct NoOutgoingHttp;

impl WasiHttpHooks for NoOutgoingHttp {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Makes one store and instance per request.
struct Instantiator {
    engine: Engine,
    pre: ProxyPre<RequestState>,
    limits: RequestLimits,
    environment: Vec<(String, String)>,
}

impl HandlerState for Instantiator {
    type StoreData = RequestState;
    type WorkerExpiration = Deadline;
    type WorkerState = SingleUse;

    async fn instantiate(&self) -> wasmtime::Result<Instance<RequestState, Deadline, SingleUse>> {
        // Granted: the two limit variables, nothing else.
        let state = RequestState {
            wasi: closed_wasi(&self.environment),
            http: WasiHttpCtx::new(),
            hooks: NoOutgoingHttp,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(self.limits.memory_bytes),
        };
        let mut store = closed_store(&self.engine, state, self.limits.memory_bytes, self.limits.timeout);
        let proxy = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance {
            store,
            proxy,
            view: <RequestState as WasiHttpView>::http,
            expiration: Deadline { timeout: self.limits.timeout, sleep: Box::pin(tokio::time::sleep(Duration::MAX)) },
            state: SingleUse { timeout: self.limits.timeout },
        })
    }
}

/// Each instance serves exactly one request, then is dropped.
struct SingleUse {
    timeout: Duration,
}

impl WorkerState for SingleUse {
    type StoreData = RequestState;
    type RequestData = ();

    fn should_accept_request(&self, _concurrent: usize, total: usize) -> ShouldAccept {
        if total == 0 { ShouldAccept::Yes } else { ShouldAccept::Never }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, RequestState>,
        _data: (),
        _task: wasmtime::component::GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + 'static + Send + Sync>> {
        Box::pin(tokio::time::sleep(self.timeout))
    }

    fn drop(&self, _store: Store<RequestState>, _result: wasmtime::Result<()>) {
        // The request's outcome already reached its client (a 500 if it trapped).
    }
}

/// How long an instance waits for its one request before it is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Ends an instance once its request has run past the time limit (or it has waited
/// [`IDLE_TIMEOUT`] for one). Once it has answered, the handler drops it anyway.
struct Deadline {
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Deadline {
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>, status: WorkerStatus, start: Instant) -> Poll<()> {
        let this = self.get_mut();
        let timeout = if status == WorkerStatus::Idle { IDLE_TIMEOUT } else { this.timeout };
        let Some(deadline) = start.checked_add(timeout) else { return Poll::Pending };
        let deadline = tokio::time::Instant::from_std(deadline);
        if this.sleep.deadline() != deadline {
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's entry goes once none of its requests holds or waits for a place,
    /// also when the last one is dropped while waiting.
    #[test]
    fn a_clients_entry_goes_with_its_last_request() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let shares = Arc::new(ClientShares::new(1));
            let client: IpAddr = "10.0.0.1".parse().unwrap();
            let first = ClientShares::acquire(&shares, client).await;
            let waiting = tokio::spawn({
                let shares = Arc::clone(&shares);
                async move { ClientShares::acquire(&shares, client).await }
            });
            tokio::task::yield_now().await;
            assert_eq!(shares.lock()[&client].1, 2, "one holds, one waits");
            waiting.abort();
            let _ = waiting.await;
            drop(first);
            assert!(shares.lock().is_empty(), "the entry outlived its requests");
        });
    }
}
