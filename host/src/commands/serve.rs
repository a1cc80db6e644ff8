//! `steerlm serve`: the reward model over HTTP (see [`crate::serve`]).

use super::Context;
use super::model_args::ModelArgs;
use crate::model::RewardModel;
use crate::model::attribute_weights::AttributeWeights;
use crate::serve::batcher::BatchPolicy;
use crate::serve::connections::ConnectionLimits;
use crate::serve::limits::RequestLimits;
use crate::serve::{ServeOptions, check_options, serve};
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Hugging Face checkpoint folder of the reward model.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, default_value_t = 5555)]
    pub port: u16,
    /// The model's name in /v2/models/{name}.
    #[arg(long, alias = "model_name", default_value = "reward_model")]
    pub model_name: String,
    #[command(flatten)]
    pub model_args: ModelArgs,
    /// Most tokens in one batch. Requests are split into batches of at most this many
    /// tokens, taken in turn from every waiting request.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub max_batch_tokens: usize,
    /// How long a request waits for others to batch with, in milliseconds.
    #[arg(long, default_value_t = 2.0, value_name = "MS", value_parser = parse_queue_delay)]
    pub max_queue_delay_ms: f64,
    /// Run every request on its own (no dynamic batching).
    #[arg(long)]
    pub no_dynamic_batching: bool,
    /// Require `Authorization: Bearer KEY` on every request but health checks.
    #[arg(long, env = "STEERLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body, in MiB (413 past it).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub max_body_mb: usize,
    /// Most texts (or labeled turns of records) in one request (413 past it; KServe
    /// requests are also held to the max_batch_size of 1024 their config advertises).
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_request_texts: u64,
    /// Most connections served at once; more wait until one closes.
    #[arg(long, default_value_t = 512, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Most connections from one client address at once; more are answered 503 and
    /// closed, so one client cannot take every connection (raise it behind a proxy).
    #[arg(long, default_value_t = 128, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections_per_client: u64,
    /// Seconds a client has to send a request's headers (and an idle keep-alive
    /// connection stays open) before the connection is closed.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=crate::commands::MAX_SECONDS))]
    pub header_read_timeout: u64,
    /// On SIGTERM or Ctrl-C: seconds to finish the requests in flight (no new ones are
    /// accepted) before stopping anyway. A second signal stops at once.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub drain_timeout: u64,
    /// Seconds a client has, once its headers are in, to send the whole body (408 past
    /// it), so bodies that trickle cannot hold connections.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=crate::commands::MAX_SECONDS))]
    pub body_read_timeout: u64,
    /// Combine the attribute scores into one reward: one weight per attribute, e.g.
    /// `0,0,0,0,0.3,0.74,0.46,0.47,-0.33` (Nemotron-4-340B-Reward's card). Used by
    /// /get_reward, /predict, /classify, /pooling and /v1/score.
    #[arg(long, value_name = "W,W,...", value_parser = AttributeWeights::parse, allow_hyphen_values = true)]
    pub attribute_weights: Option<AttributeWeights>,
}

impl ServeArgs {
    fn options(&self, context: &Context) -> ServeOptions {
        ServeOptions {
            host: self.host.clone(),
            port: self.port,
            model_name: self.model_name.clone(),
            api_key: self.api_key.clone(),
            batching: BatchPolicy {
                max_tokens: self.max_batch_tokens.max(1),
                max_delay: Duration::from_secs_f64(self.max_queue_delay_ms.max(0.0) / 1000.0),
                enabled: !self.no_dynamic_batching,
            },
            limits: RequestLimits {
                max_texts: usize::try_from(self.max_request_texts).unwrap_or(usize::MAX),
                max_body_bytes: self.max_body_mb << 20,
                body_read_timeout: Duration::from_secs(self.body_read_timeout),
            },
            connections: ConnectionLimits {
                max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
                max_per_client: usize::try_from(self.max_connections_per_client).unwrap_or(usize::MAX),
                header_read_timeout: Duration::from_secs(self.header_read_timeout),
                drain_timeout: Duration::from_secs(self.drain_timeout),
            },
            attribute_weights: self.attribute_weights.clone(),
            quiet: context.quiet,
        }
    }
}

pub fn run(context: &Context, args: &ServeArgs) -> Result<()> {
    let options = args.options(context);
    // Settings first: a bad key should not wait for a model to load.
    check_options(&options)?;
    let model = RewardModel::load(&args.model, args.model_args.load_options())
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    context.block_on(serve(options, model))?
}

/// A delay in milliseconds from 0 to a minute: a request waits that long at most.
fn parse_queue_delay(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ms) if (0.0..=60_000.0).contains(&ms) => Ok(ms),
        _ => Err(format!("{text:?} is not a number of milliseconds from 0 to 60000")),
    }
}
