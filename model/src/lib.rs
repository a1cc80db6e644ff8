//! SteerLM-style regression reward models: a decoder LLM plus a linear head read at
//! the last token, loaded from Hugging Face checkpoint folders and run on the CPU or
//! through wgpu compute shaders.
//!
//! Its own crate so that it builds without the host's wasmtime and HTTP stack: a kernel's
//! tests build without the host, and other programs can embed the reward model alone. The
//! `steerlm` host re-exports it as `steerlm::model`.

pub mod arch;
pub mod attribute_weights;
pub mod chat_template;
pub mod config;
pub mod cpu;
pub mod fast_math;
pub mod gpu;
pub mod layout;
pub mod memory_budget;
pub mod rope;
pub mod tokenize;
pub mod weights;

#[cfg(test)]
mod tests;

// The tests render hostile chat templates within a memory budget, as the binary does.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: memory_budget::BudgetedAllocator = memory_budget::BudgetedAllocator;

use anyhow::{Context, Result, bail};
use chat_template::{ChatTemplate, Messages};
use config::ModelConfig;
use layout::ModelTensors;
use std::path::Path;
pub use tokenize::End;
use tokenize::{Source, TextTokenizer, Tokens};
use weights::Weights;

/// Where the forward pass runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Device {
    /// A real GPU through wgpu when there is one, else the CPU (a software adapter is
    /// slower than the CPU path).
    #[default]
    Auto,
    /// wgpu on whatever adapter exists, software ones included.
    Wgpu,
    /// The plain-Rust CPU implementation.
    Cpu,
}

/// Largest |score difference| allowed between the f16 (tensor-core) path and f32
/// transformers. The fixtures' worst case under emulated f16 arithmetic is recorded in
/// `f16_arithmetic_stays_within_the_stated_tolerance`; see the README.
pub const F16_TOLERANCE: f32 = 2e-2;

/// Arithmetic of the wgpu path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// Tensor cores (f16 inputs, f32 accumulation) when the adapter has them, else f32.
    #[default]
    Auto,
    /// f32 throughout: the path the goldens check to `1e-4 + 1e-4 * |golden|`.
    F32,
    /// Tensor cores required, on any adapter with f16 cooperative matrices (software ones
    /// included, where `auto` stays on f32 for speed); an error elsewhere.
    F16,
}

/// A model that returns NaN or infinity is broken (bad weights, overflow): such a score
/// must never become a label.
pub fn check_finite(scores: &[f32]) -> Result<()> {
    match scores.iter().find(|s| !s.is_finite()) {
        Some(bad) => bail!("the model returned a non-finite score ({bad})"),
        None => Ok(()),
    }
}

/// Gemma2's soft cap, in place: `cap * tanh(v / cap)` (divided, then multiplied, as
/// transformers computes it), bounding every value to (-cap, cap).
pub fn soft_cap(values: &mut [f32], cap: f32) {
    values.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
}

/// Several token sequences packed end to end, without padding.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub ids: Vec<u32>,
    /// Position of each token within its own sequence.
    pub positions: Vec<u32>,
    /// Index of each sequence's first token in `ids`.
    pub starts: Vec<u32>,
    pub lengths: Vec<u32>,
}

impl Batch {
    pub fn pack<S: AsRef<[u32]>>(sequences: &[S]) -> Self {
        let mut batch = Batch::default();
        for seq in sequences {
            let seq = seq.as_ref();
            batch.starts.push(batch.ids.len() as u32);
            batch.lengths.push(seq.len() as u32);
            batch.ids.extend_from_slice(seq);
            batch.positions.extend(0..seq.len() as u32);
        }
        batch
    }
}

/// Which implementation runs the forward pass: the plain-Rust CPU one or wgpu (on a
/// hardware or software adapter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Cpu,
    Gpu,
}

#[allow(clippy::large_enum_variant)] // one per loaded model
enum Backend {
    Cpu(cpu::CpuModel),
    Gpu(gpu::GpuModel),
}

pub struct RewardModel {
    pub config: ModelConfig,
    tokenizer: TextTokenizer,
    chat: Chat,
    backend: Backend,
}

/// The checkpoint's chat template, if it has one that compiles. A template that does
/// not compile only fails the requests that need it: plain texts still score.
enum Chat {
    Absent,
    Ready(Box<ChatTemplate>),
    Broken(String),
}

/// What a reward is computed over: a text already in the model's format, or a
/// conversation rendered with the checkpoint's chat template.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'a> {
    Text(&'a str),
    Chat(&'a Messages),
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub device: Device,
    pub add_bos: bool,
    pub precision: Precision,
    /// A `*ForCausalLM` reward's vocabulary ids (`None`: id 0).
    pub reward_token_ids: Option<Vec<u32>>,
}

impl RewardModel {
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self> {
        let mut config = ModelConfig::load(dir)?;
        if let Some(ids) = &options.reward_token_ids {
            config = config.with_reward_token_ids(ids)?;
        }
        let tokenizer = TextTokenizer::load(dir, config.bos_token_id, options.add_bos, config.max_positions)?;
        let chat = match ChatTemplate::load(dir) {
            Ok(Some(template)) => Chat::Ready(Box::new(template)),
            Ok(None) => Chat::Absent,
            Err(e) => Chat::Broken(format!("{e:#}")),
        };
        let weights = Weights::open(dir)?;
        let tensors = ModelTensors::locate(&config, &weights)?;
        let gpu = match options.device {
            Device::Cpu => None,
            Device::Auto => gpu::open_device(gpu::AdapterChoice::HardwareOnly)?,
            Device::Wgpu => gpu::open_device(gpu::AdapterChoice::Any)?,
        };
        if gpu.is_none() && options.precision == Precision::F16 {
            bail!(
                "--precision f16 runs on tensor cores, and the model runs on the CPU here ({}); use --device wgpu \
                 on an adapter with f16 cooperative matrices, or --precision auto",
                if options.device == Device::Cpu { "--device cpu" } else { "no hardware GPU found" }
            );
        }
        let backend = match gpu {
            Some(gpu) => Backend::Gpu(gpu::GpuModel::new(&config, &tensors, gpu, options.precision)?),
            None => Backend::Cpu(cpu::CpuModel::new(&config, &tensors)?),
        };
        Ok(RewardModel { config, tokenizer, chat, backend })
    }

    pub fn labels(&self) -> &[String] {
        &self.config.labels
    }

    /// Where the forward pass runs (Triton's `KIND_CPU` or `KIND_GPU`).
    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            Backend::Cpu(_) => BackendKind::Cpu,
            Backend::Gpu(_) => BackendKind::Gpu,
        }
    }

    pub fn device_name(&self) -> String {
        match &self.backend {
            Backend::Cpu(_) => format!("cpu ({} threads)", rayon::current_num_threads()),
            Backend::Gpu(model) => model.adapter_name(),
        }
    }

    pub fn tokenize(&self, text: &str) -> Result<Tokens> {
        self.tokenizer.encode(text)
    }

    /// Whether conversations can be scored, and from which file the template came.
    pub fn chat_template_source(&self) -> Option<&Path> {
        match &self.chat {
            Chat::Ready(template) => Some(&template.source),
            _ => None,
        }
    }

    /// The conversation rendered with the checkpoint's chat template.
    pub fn render_chat(&self, messages: &Messages) -> Result<String> {
        match &self.chat {
            Chat::Ready(template) => template.render(messages),
            Chat::Broken(why) => bail!("this checkpoint's chat template cannot be used: {why}"),
            Chat::Absent => bail!(
                "this checkpoint has no chat template (no chat_template.jinja, no `chat_template` in tokenizer_config.json), so it cannot score `messages`: send the conversation as text in the model's own format, or add a template"
            ),
        }
    }

    /// `text` tokenized for scoring: cut to the context (`exceeded` says so) and never
    /// empty, since a reward is read at the last token.
    pub fn tokenize_for_scoring(&self, text: &str) -> Result<Tokens> {
        self.tokenize_prompt(Prompt::Text(text))
    }

    /// [`RewardModel::tokenize_for_scoring`] for a text or a conversation.
    pub fn tokenize_prompt(&self, prompt: Prompt) -> Result<Tokens> {
        self.tokenize_prompt_end(prompt, self.tokenizer.max_tokens(), End::First)
    }

    /// The first or last `keep` token ids of a text (BOS added with `--add-bos`) or of a
    /// rendered conversation (special tokens as its template writes them), never empty;
    /// `exceeded` says it had more. Only about as much of a long text is tokenized as
    /// `keep` tokens take ([`tokenize::TextTokenizer::encode_end`]).
    pub fn tokenize_prompt_end(&self, prompt: Prompt, keep: usize, end: End) -> Result<Tokens> {
        let tokens = match prompt {
            Prompt::Text(text) => self.tokenizer.encode_end(text, Source::Text, keep, end)?,
            Prompt::Chat(messages) => {
                self.tokenizer.encode_end(&self.render_chat(messages)?, Source::Rendered, keep, end)?
            }
        };
        if tokens.ids.is_empty() {
            bail!("the text has no tokens");
        }
        if let Some(&bad) = tokens.ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            let name = self.tokenizer.token_text(bad).map(|t| format!(" ({t:?})")).unwrap_or_default();
            bail!(
                "token id {bad}{name} is outside the model's vocabulary of {} ids: tokenizer.json and config.json's \
                 vocab_size disagree",
                self.config.vocab_size
            );
        }
        Ok(tokens)
    }

    /// Every text tokenized for scoring; an error names the text by its index.
    pub fn tokenize_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Tokens>> {
        let tokenize =
            |(i, text): (usize, &S)| self.tokenize_for_scoring(text.as_ref()).with_context(|| format!("text {i}"));
        texts.iter().enumerate().map(tokenize).collect()
    }

    /// Scores of each text: tokenized, scored as one batch, and checked to be finite.
    pub fn score_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        let sequences: Vec<Vec<u32>> = self.tokenize_texts(texts)?.into_iter().map(|tokens| tokens.ids).collect();
        let scores = self.score(&sequences)?;
        for (i, row) in scores.iter().enumerate() {
            check_finite(row).with_context(|| format!("text {i}"))?;
        }
        Ok(scores)
    }

    /// Scores of each token sequence, computed as one packed batch.
    pub fn score(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.check(sequences)?;
        let batch = Batch::pack(sequences);
        match &self.backend {
            Backend::Cpu(model) => model.forward(&batch),
            Backend::Gpu(model) => model.forward(&batch),
        }
    }

    /// Every sequence is non-empty, inside the vocabulary and the context.
    fn check(&self, sequences: &[Vec<u32>]) -> Result<()> {
        for (i, seq) in sequences.iter().enumerate() {
            if seq.is_empty() {
                bail!("sequence {i} has no tokens");
            }
            if let Some(&bad) = seq.iter().find(|&&id| id as usize >= self.config.vocab_size) {
                bail!("token id {bad} is outside the vocabulary ({} ids)", self.config.vocab_size);
            }
            if seq.len() > self.config.max_positions {
                bail!("sequence {i} has {} tokens, more than the context of {}", seq.len(), self.config.max_positions);
            }
        }
        Ok(())
    }

    /// [`RewardModel::score`] with per-kernel GPU times, where the backend can time its
    /// kernels (wgpu adapters with timestamp queries); `None` elsewhere.
    pub fn score_profiled(&self, sequences: &[Vec<u32>]) -> Result<(Vec<Vec<f32>>, Option<gpu::kernels::KernelTimes>)> {
        match &self.backend {
            Backend::Gpu(model) if model.can_profile() => {
                self.check(sequences)?;
                model.forward_timed(&Batch::pack(sequences), true)
            }
            _ => Ok((self.score(sequences)?, None)),
        }
    }
}
