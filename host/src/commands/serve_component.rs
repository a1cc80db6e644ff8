//! `steerlm serve-component`: the embedded wasi:http component over HTTP (see
//! [`crate::component_server`]).

use super::Context;
use crate::component_server::{RequestLimits, ServeComponentOptions, serve};
use anyhow::Result;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ServeComponentArgs {
    /// Address to listen on (loopback unless told otherwise; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8089", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Largest request body, in MiB, before and after gzip decoding (413 past it).
    #[arg(long, default_value_t = 32, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_body_mb: u64,
    /// Largest response body, in MiB (413 past it; regression output grows quickly).
    /// The component is 32-bit: body and response share its 4 GiB address space.
    #[arg(long, default_value_t = 256, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=2048))]
    pub max_response_mb: u64,
    /// Requests handled at once; more wait their turn (`GET /health` never waits).
    /// Default: 4 per CPU core. Conversions are CPU-bound, and each request in flight
    /// holds its body, its answer and its component's memory (a regression answer can be
    /// hundreds of MB), so more slots than that add memory, not speed.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub max_concurrent_requests: Option<usize>,
    /// Requests one client address may have handled at once; more wait for one of its own
    /// to finish, so one client cannot hold every slot (raise it behind a proxy).
    /// Default: a quarter of the slots, at least 1 and at most 16.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_requests_per_client: Option<usize>,
    /// Most connections served at once; more wait until one closes.
    #[arg(long, default_value_t = 512, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Most connections from one client address at once; more are answered 503 and
    /// closed, so one client's idle sockets cannot take every connection (raise it behind
    /// a proxy). Half the connections: a batch client may open a connection per request
    /// and let them wait for request slots.
    #[arg(long, default_value_t = 256, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections_per_client: usize,
    /// Seconds a client has to send a whole request body once its request is taken
    /// (408 past it), so a body that never ends cannot hold a request slot.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=crate::commands::MAX_SECONDS))]
    pub body_read_timeout: u64,
}

pub fn run(context: &Context, args: &ServeComponentArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let slots = args.max_concurrent_requests.unwrap_or(4 * cores);
    let options = ServeComponentOptions {
        listen: args.listen,
        max_body_bytes: (args.max_body_mb << 20) as usize,
        max_response_bytes: (args.max_response_mb << 20) as usize,
        max_concurrent_requests: slots,
        max_connections: args.max_connections,
        max_connections_per_client: args.max_connections_per_client,
        max_requests_per_client: args.max_requests_per_client.unwrap_or((slots / 4).clamp(1, 16)),
        body_read_timeout: Duration::from_secs(args.body_read_timeout),
        // The global sandbox flags: the same allowance as the conversion components.
        limits: RequestLimits {
            memory_bytes: context.sandbox.component_memory_mb << 20,
            timeout: Duration::from_secs(context.sandbox.component_timeout),
        },
        quiet: context.quiet,
    };
    context.block_on(serve(options))?
}
