//! A small causal-attention problem with an f64 reference: what the tensor-core flash kernel
//! proves itself on at load ([`FlashAttention::self_check`]), and what the attention tests
//! check every kernel against.

use super::attention::{FlashAttention, FlashParams, attention_blocks, causal_attention_flops, window_param};
use super::{BindCache, Recorder, read_buffer};
use anyhow::Result;
use wgpu::util::DeviceExt;

/// A packed batch of sequences: q `[tokens, heads * head_dim]`, k and v
/// `[tokens, kv_heads * head_dim]`, with the sequences' lengths and first rows.
pub struct AttentionProblem {
    pub lengths: Vec<u32>,
    pub starts: Vec<u32>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Gemma2's attention soft cap.
    pub softcap: Option<f32>,
    /// A sliding layer's window: a query at position i sees keys i - window + 1 ..= i.
    pub window: Option<usize>,
}

/// Deterministic values in [-1, 1).
pub fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

impl AttentionProblem {
    /// Sequences of `lengths` tokens, scaled by `1 / sqrt(head_dim)`, no soft cap.
    pub fn new(lengths: &[u32], heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        let starts: Vec<u32> = lengths.iter().scan(0, |s, &l| Some(std::mem::replace(s, *s + l))).collect();
        let tokens = lengths.iter().sum::<u32>() as usize;
        // q spans [-3, 3) so that some rows have peaked softmaxes, not near-uniform ones.
        let q = values(tokens * heads * head_dim, 1).into_iter().map(|x| 3.0 * x).collect();
        let k = values(tokens * kv_heads * head_dim, 2);
        let v = values(tokens * kv_heads * head_dim, 3);
        let scale = 1.0 / (head_dim as f32).sqrt();
        AttentionProblem {
            lengths: lengths.to_vec(),
            starts,
            heads,
            kv_heads,
            head_dim,
            q,
            k,
            v,
            scale,
            softcap: None,
            window: None,
        }
    }

    pub fn tokens(&self) -> usize {
        self.lengths.iter().sum::<u32>() as usize
    }

    /// The parameters of a flash dispatch over this problem (`blocks` set by `record`).
    pub fn flash_params(&self) -> FlashParams {
        FlashParams {
            heads: self.heads as u32,
            kv_heads: self.kv_heads as u32,
            head_dim: self.head_dim as u32,
            blocks: 0,
            scale: self.scale,
            softcap: self.softcap.unwrap_or(0.0),
            window: window_param(self.window),
            _pad: 0,
        }
    }

    /// Causal attention in f64 loops (within the window, where there is one).
    pub fn reference(&self) -> Vec<f32> {
        let (hd, heads, kv_heads) = (self.head_dim, self.heads, self.kv_heads);
        let group = heads / kv_heads;
        let scale = self.scale as f64;
        let mut out = vec![0.0f32; self.tokens() * heads * hd];
        for (&start, &length) in self.starts.iter().zip(&self.lengths) {
            let (start, length) = (start as usize, length as usize);
            for t in start..start + length {
                let seen = self.window.map_or(start, |w| start.max((t + 1).saturating_sub(w)))..=t;
                for h in 0..heads {
                    let kvh = h / group;
                    let q = &self.q[(t * heads + h) * hd..][..hd];
                    let scores: Vec<f64> = seen
                        .clone()
                        .map(|s| {
                            let k = &self.k[(s * kv_heads + kvh) * hd..][..hd];
                            let s = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale;
                            self.softcap.map_or(s, |cap| (s / cap as f64).tanh() * cap as f64)
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = weights.iter().sum();
                    for d in 0..hd {
                        let value: f64 = seen
                            .clone()
                            .zip(&weights)
                            .map(|(s, w)| w * self.v[(s * kv_heads + kvh) * hd + d] as f64)
                            .sum();
                        out[(t * heads + h) * hd + d] = (value / sum) as f32;
                    }
                }
            }
        }
        out
    }

    /// Runs `flash` over this problem and returns its output buffer's bytes (f32 or f16
    /// values, as the kernel stores them). The buffer starts as all-ones bytes, NaN in
    /// either type, so a row the kernel never writes shows.
    pub fn run_flash(&self, device: &wgpu::Device, queue: &wgpu::Queue, flash: &FlashAttention) -> Result<Vec<u8>> {
        let block_rows = flash.block_rows(self.heads, self.kv_heads);
        let blocks = attention_blocks(&self.starts, &self.lengths, block_rows);
        let storage = |label: &str, bytes: &[u8]| {
            // Bindings may not be empty.
            let contents = if bytes.is_empty() { &[0u8; 16][..] } else { bytes };
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
        };
        let q = storage("attention check q", bytemuck::cast_slice(&self.q));
        let k = storage("attention check k", bytemuck::cast_slice(&self.k));
        let v = storage("attention check v", bytemuck::cast_slice(&self.v));
        let blocks_buffer = storage("attention check blocks", bytemuck::cast_slice(&blocks));
        let out = storage("attention check out", &vec![0xffu8; self.tokens() * self.heads * self.head_dim * 4]);
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("attention check readback"),
            size: out.size(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let flops = causal_attention_flops(&self.lengths, self.heads, self.head_dim, self.window);
        let mut rec = Recorder::new(device);
        flash.record(&mut rec, self.flash_params(), &q, &k, &v, &blocks_buffer, &out, blocks.len(), flops);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        rec.encode(device, queue, &mut BindCache::default(), &mut encoder, false)?;
        encoder.copy_buffer_to_buffer(&out, 0, &readback, 0, out.size());
        queue.submit([encoder.finish()]);
        read_buffer(device, &readback)
    }
}

/// The first `count` values in an output buffer's bytes, read as f32, or as f16 where
/// `stored_f16`.
pub fn output_values(bytes: &[u8], stored_f16: bool, count: usize) -> Vec<f32> {
    if stored_f16 {
        bytes.chunks_exact(2).take(count).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
    } else {
        bytes.chunks_exact(4).take(count).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}
