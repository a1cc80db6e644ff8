//! Scratch buffers of a forward pass, kept between batches. They are sized for a
//! capacity (tokens, sequences) rounded up to a power of two, so batches of similar
//! shape reuse them and the bind groups naming them ([`BindCache`]); a larger batch
//! replaces them, and its bind groups with them.

use super::kernels::BindCache;
use super::kernels::attention::max_blocks;

/// Widths of the model's activations, in floats per token.
#[derive(Clone, Copy, Debug)]
pub struct Widths {
    pub hidden: usize,
    pub q: usize,
    pub kv: usize,
    pub ffn: usize,
    pub labels: usize,
    /// Query rows per flash-attention block, when flash attention runs.
    pub attention_block_rows: Option<usize>,
    /// Whether the gated MLP activation is also kept as f16 (`mlp_half`).
    pub half_mlp: bool,
}

pub struct Workspace {
    pub tokens: usize,
    pub sequences: usize,
    // Per-batch inputs, written by the host.
    pub ids: wgpu::Buffer,
    pub positions: wgpu::Buffer,
    /// Per token: (first key, one past the last key) of its causal attention.
    pub key_ranges: wgpu::Buffer,
    /// Per sequence: the row of its last token.
    pub last_rows: wgpu::Buffer,
    pub last_positions: wgpu::Buffer,
    pub last_key_ranges: wgpu::Buffer,
    /// Flash attention's blocks: `[first row, rows, sequence start, 0]`.
    pub attention_blocks: wgpu::Buffer,
    // Activations.
    pub x: wgpu::Buffer,
    pub normed: wgpu::Buffer,
    pub q: wgpu::Buffer,
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    pub attended: wgpu::Buffer,
    pub mlp: wgpu::Buffer,
    /// The gated MLP activation as f16, for a down projection reading f16 x (one word when
    /// unused).
    pub mlp_half: wgpu::Buffer,
    /// The residual stream of each sequence's last token, from the last layer on.
    pub last_x: wgpu::Buffer,
    pub last_normed: wgpu::Buffer,
    pub scores: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    pub binds: BindCache,
}

impl Workspace {
    /// Whether a batch of `tokens` in `sequences` fits.
    pub fn fits(&self, tokens: usize, sequences: usize) -> bool {
        tokens <= self.tokens && sequences <= self.sequences
    }

    /// Buffers for at least `tokens` and `sequences`, rounded up to powers of two and
    /// capped at `max_tokens` (the most one binding holds).
    pub fn new(device: &wgpu::Device, widths: Widths, tokens: usize, sequences: usize, max_tokens: usize) -> Self {
        let tokens = tokens.next_power_of_two().max(64).min(max_tokens.max(tokens));
        let sequences = sequences.next_power_of_two().max(8).min(tokens.max(sequences));
        let buffer = |label: &str, words: usize, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (words.max(1) * 4) as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        let input = |label: &str, words: usize| {
            buffer(label, words, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST)
        };
        let scratch = |label: &str, words: usize| {
            buffer(label, words, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC)
        };
        let (t, s) = (tokens, sequences);
        Workspace {
            tokens,
            sequences,
            ids: input("ids", t),
            positions: input("positions", t),
            key_ranges: input("key ranges", 2 * t),
            last_rows: input("last rows", s),
            last_positions: input("last positions", s),
            last_key_ranges: input("last key ranges", 2 * s),
            attention_blocks: input(
                "attention blocks",
                4 * widths.attention_block_rows.map_or(0, |rows| max_blocks(t, s, rows)),
            ),
            x: scratch("residual", t * widths.hidden),
            normed: scratch("normed", t * widths.hidden),
            q: scratch("q", t * widths.q),
            k: scratch("k", t * widths.kv),
            v: scratch("v", t * widths.kv),
            attended: scratch("attended", t * widths.q),
            mlp: scratch("mlp", t * widths.ffn),
            mlp_half: scratch("mlp f16", if widths.half_mlp { (t * widths.ffn).div_ceil(2) } else { 1 }),
            last_x: scratch("last residual", s * widths.hidden),
            last_normed: scratch("last normed", s * widths.hidden),
            scores: scratch("scores", s * widths.labels),
            readback: buffer(
                "scores readback",
                s * widths.labels,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            ),
            binds: BindCache::default(),
        }
    }
}
