//! The reward model's forward pass in plain Rust on the CPU, in f32. It is the
//! reference the shaders are tested against, and a backend of its own (`--device cpu`).
//! Matrix products go through the `gemm` crate; everything else is simple loops,
//! parallel over rows with rayon.

use super::arch::{MlpKind, NormKind};
use super::config::ModelConfig;
use super::fast_math;
use super::layout::{LinearTensors, ModelTensors, NormTensors};
use super::rope::RopeTable;
use super::{Batch, soft_cap};
use anyhow::Result;
use gemm::Parallelism;

/// Rows per linear-layer block (see `Linear::forward`).
const ROW_BLOCK: usize = 64;
/// Query rows per block of [`CpuModel::attention`]'s score matrix.
const ATTENTION_ROWS: usize = 128;
use rayon::prelude::*;

struct Linear {
    /// `[out, in]`, row-major, as stored.
    weight: Vec<f32>,
    /// Round inputs to f16 before multiplying (weights were rounded at load).
    f16_inputs: bool,
    bias: Option<Vec<f32>>,
    out_features: usize,
    in_features: usize,
}

/// Arithmetic of the linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    /// f32 throughout: the reference.
    F32,
    /// Weights and inputs rounded to f16, products summed in f32: what tensor cores
    /// compute (a product of two f16 values is exact in f32), up to summation order. Tests
    /// use it to state the f16 path's tolerance from the fixtures, on any machine.
    F16Inputs,
}

/// `v` rounded to the nearest f16 (saturating to ±inf beyond its range), back in f32.
fn round_to_f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

struct Norm {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

struct Layer {
    input_norm: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Qwen3's per-head query and key RMSNorm weights.
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_norm: Norm,
    /// Gemma2's norms of the attention and MLP outputs.
    attention_out_norm: Option<Norm>,
    mlp_out_norm: Option<Norm>,
    gate: Option<Linear>,
    up: Linear,
    down: Linear,
}

pub struct CpuModel {
    config: ModelConfig,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Norm,
    score: Linear,
    rope: RopeTable,
}

impl Linear {
    fn new(t: &LinearTensors, arithmetic: Arithmetic) -> Self {
        let mut weight = t.weight.to_f32();
        let f16_inputs = arithmetic == Arithmetic::F16Inputs;
        if f16_inputs {
            weight.iter_mut().for_each(|w| *w = round_to_f16(*w));
        }
        Linear {
            weight,
            f16_inputs,
            bias: t.bias.as_ref().map(|b| b.to_f32()),
            out_features: t.out_features,
            in_features: t.in_features,
        }
    }

    /// `x @ W^T (+ b)` for `rows` rows of `x`.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let rounded: Vec<f32>;
        let x = if self.f16_inputs {
            rounded = x.iter().map(|&v| round_to_f16(v)).collect();
            &rounded
        } else {
            x
        };
        let (n, k) = (self.out_features, self.in_features);
        debug_assert_eq!(x.len(), rows * k);
        // Batch invariance: gemm picks its kernels and blocking from the row count, and
        // with them the order of the sums, so a row's result would depend on how many
        // rows came with it. Blocks of a fixed row count make every row's arithmetic the
        // same whatever the batch; the last block is padded with zero rows.
        // Only the last, partial block is copied to pad it.
        let padded_rows = rows.next_multiple_of(ROW_BLOCK);
        let whole = rows / ROW_BLOCK * ROW_BLOCK * k;
        let tail: Vec<f32> = if padded_rows == rows {
            Vec::new()
        } else {
            let mut tail = x[whole..].to_vec();
            tail.resize(ROW_BLOCK * k, 0.0);
            tail
        };
        let mut out = vec![0f32; padded_rows * n];
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(bias);
            }
        }
        let blocks = x[..whole].chunks_exact(ROW_BLOCK * k).chain(tail.chunks_exact(ROW_BLOCK * k));
        for (x, out) in blocks.zip(out.chunks_exact_mut(ROW_BLOCK * n)) {
            // SAFETY: the pointers cover ROW_BLOCK x k, k x n (W^T read through strides)
            // and ROW_BLOCK x n elements, all alive for the call.
            unsafe {
                gemm::gemm(
                    ROW_BLOCK,
                    n,
                    k,
                    out.as_mut_ptr(),
                    1,
                    n as isize,
                    self.bias.is_some(),
                    x.as_ptr(),
                    1,
                    k as isize,
                    self.weight.as_ptr(),
                    k as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::Rayon(0),
                );
            }
        }
        out.truncate(rows * n);
        out
    }
}

impl Norm {
    fn new(t: &NormTensors) -> Self {
        Norm { weight: t.multiplier(), bias: t.bias.as_ref().map(|b| b.to_f32()) }
    }

    fn forward(&self, x: &[f32], hidden: usize, eps: f32, kind: NormKind) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        out.par_chunks_exact_mut(hidden).zip(x.par_chunks_exact(hidden)).for_each(|(o, x)| {
            if kind == NormKind::LayerNorm1P {
                let mean = x.iter().sum::<f32>() / hidden as f32;
                let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / hidden as f32;
                let inv = 1.0 / (var + eps).sqrt();
                let bias = self.bias.as_deref().expect("LayerNorm1P has a bias");
                for i in 0..hidden {
                    o[i] = (x[i] - mean) * inv * (1.0 + self.weight[i]) + bias[i];
                }
            } else {
                rms_norm(x, &self.weight, eps, o);
            }
        });
        out
    }
}

/// `o = x / sqrt(mean(x^2) + eps) * weight`.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32, o: &mut [f32]) {
    let mean_square = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_square + eps).sqrt();
    for ((o, x), w) in o.iter_mut().zip(x).zip(weight) {
        *o = x * inv * w;
    }
}

/// Qwen3's q/k norm: RMSNorm over each head of every row, in place.
fn norm_heads(x: &mut [f32], weight: &[f32], eps: f32) {
    x.par_chunks_exact_mut(weight.len()).for_each(|head| {
        let input = head.to_vec();
        rms_norm(&input, weight, eps, head);
    });
}

impl CpuModel {
    pub fn new(config: &ModelConfig, tensors: &ModelTensors) -> Result<Self> {
        Self::with_arithmetic(config, tensors, Arithmetic::F32)
    }

    /// The model with linear layers in the given arithmetic.
    pub fn with_arithmetic(config: &ModelConfig, tensors: &ModelTensors, arithmetic: Arithmetic) -> Result<Self> {
        let linear = |t: &LinearTensors| Linear::new(t, arithmetic);
        let layers = tensors
            .layers
            .iter()
            .map(|l| Layer {
                input_norm: Norm::new(&l.input_norm),
                q: linear(&l.q),
                k: linear(&l.k),
                v: linear(&l.v),
                o: linear(&l.o),
                q_norm: l.q_norm.as_ref().map(|t| t.to_f32()),
                k_norm: l.k_norm.as_ref().map(|t| t.to_f32()),
                post_norm: Norm::new(&l.post_norm),
                attention_out_norm: l.attention_out_norm.as_ref().map(Norm::new),
                mlp_out_norm: l.mlp_out_norm.as_ref().map(Norm::new),
                gate: l.gate.as_ref().map(linear),
                up: linear(&l.up),
                down: linear(&l.down),
            })
            .collect();
        Ok(CpuModel {
            config: config.clone(),
            embed: tensors.embed.to_f32(),
            layers,
            final_norm: Norm::new(&tensors.final_norm),
            score: linear(&tensors.score),
            rope: RopeTable::new(config, config.max_positions),
        })
    }

    fn norm(&self, norm: &Norm, x: &[f32]) -> Vec<f32> {
        let c = &self.config;
        norm.forward(x, c.hidden_size, c.norm_eps, c.architecture.norm())
    }

    /// Scores of every sequence of a packed batch.
    pub fn forward(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let tokens = batch.ids.len();
        let mut x = vec![0f32; tokens * h];
        for (row, &id) in x.chunks_exact_mut(h).zip(&batch.ids) {
            let id = id as usize;
            row.copy_from_slice(&self.embed[id * h..(id + 1) * h]);
            if c.embedding_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embedding_scale);
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let window = c.attention_window(i);
            let normed = self.norm(&layer.input_norm, &x);
            let mut q = layer.q.forward(&normed, tokens);
            let mut k = layer.k.forward(&normed, tokens);
            let v = layer.v.forward(&normed, tokens);
            if let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) {
                norm_heads(&mut q, q_norm, c.norm_eps);
                norm_heads(&mut k, k_norm, c.norm_eps);
            }
            let (q_width, kv_width) = (c.num_heads * hd, c.num_kv_heads * hd);
            q.par_chunks_exact_mut(q_width)
                .zip(&batch.positions)
                .for_each(|(row, &pos)| self.rope.apply(row, hd, pos as usize));
            k.par_chunks_exact_mut(kv_width)
                .zip(&batch.positions)
                .for_each(|(row, &pos)| self.rope.apply(row, hd, pos as usize));
            let attended = self.attention(batch, &q, &k, &v, window);
            let out = layer.o.forward(&attended, tokens);
            self.add_residual(&mut x, out, layer.attention_out_norm.as_ref());

            let normed = self.norm(&layer.post_norm, &x);
            let mut up = layer.up.forward(&normed, tokens);
            match &layer.gate {
                Some(gate) => {
                    let gate = gate.forward(&normed, tokens);
                    match c.architecture.mlp() {
                        MlpKind::GeluTanhGated => multiply_activated(&mut up, &gate, gelu_tanh),
                        _ => multiply_activated(&mut up, &gate, silu),
                    }
                }
                None => up.par_iter_mut().for_each(|u| *u = if *u > 0.0 { *u * *u } else { 0.0 }),
            }
            let out = layer.down.forward(&up, tokens);
            self.add_residual(&mut x, out, layer.mlp_out_norm.as_ref());
        }
        // Only the last token of each sequence is scored.
        let mut last = Vec::with_capacity(batch.lengths.len() * h);
        for (&start, &len) in batch.starts.iter().zip(&batch.lengths) {
            let row = (start + len - 1) as usize;
            last.extend_from_slice(&x[row * h..(row + 1) * h]);
        }
        let normed = self.norm(&self.final_norm, &last);
        let mut scores = self.score.forward(&normed, batch.lengths.len());
        if let Some(cap) = c.final_softcap {
            soft_cap(&mut scores, cap);
        }
        Ok(scores.chunks_exact(self.score.out_features).map(<[f32]>::to_vec).collect())
    }

    /// `x += out`, normalised first where the layer has an output norm (Gemma2).
    fn add_residual(&self, x: &mut [f32], out: Vec<f32>, out_norm: Option<&Norm>) {
        let out = match out_norm {
            Some(norm) => self.norm(norm, &out),
            None => out,
        };
        add(x, &out);
    }

    /// Causal attention within each packed sequence, over the last `window` keys where
    /// the layer slides; query head j reads KV head `j / (heads / kv_heads)`.
    fn attention(&self, batch: &Batch, q: &[f32], k: &[f32], v: &[f32], window: Option<usize>) -> Vec<f32> {
        let c = &self.config;
        let hd = c.head_dim;
        let (q_width, kv_width) = (c.num_heads * hd, c.num_kv_heads * hd);
        let group = c.num_heads / c.num_kv_heads;
        let scale = c.attention_scale;
        let softcap = c.attention_softcap;
        let jobs: Vec<(usize, usize)> =
            (0..batch.lengths.len()).flat_map(|s| (0..c.num_heads).map(move |head| (s, head))).collect();
        let outputs: Vec<Vec<f32>> = jobs
            .par_iter()
            .map(|&(s, head)| {
                let (start, n) = (batch.starts[s] as usize, batch.lengths[s] as usize);
                let kv_head = head / group;
                let q0 = &q[start * q_width + head * hd..];
                let k0 = &k[start * kv_width + kv_head * hd..];
                let v0 = &v[start * kv_width + kv_head * hd..];
                let mut out = vec![0f32; n * hd];
                let mut scores = Vec::new();
                // Blocks of query rows, each against the keys its rows see: the score
                // matrix stays ATTENTION_ROWS x keys (a 128k-token text needs 64 MB, not
                // 64 GB), and no block scores keys above its diagonal.
                for first_row in (0..n).step_by(ATTENTION_ROWS) {
                    let rows = ATTENTION_ROWS.min(n - first_row);
                    let first_key = window.map_or(0, |w| (first_row + 1).saturating_sub(w));
                    let keys = first_row + rows - first_key;
                    scores.clear();
                    scores.resize(rows * keys, 0f32);
                    // SAFETY: strided views inside q, k, v, `scores` and `out`, alive for the
                    // calls: rows first_row.. of q and out, keys first_key.. of k and v.
                    unsafe {
                        gemm::gemm(
                            rows,
                            keys,
                            hd,
                            scores.as_mut_ptr(),
                            1,
                            keys as isize,
                            false,
                            q0[first_row * q_width..].as_ptr(),
                            1,
                            q_width as isize,
                            k0[first_key * kv_width..].as_ptr(),
                            kv_width as isize,
                            1,
                            0.0,
                            scale,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
                        // Row i sees keys seen_from..=i (here relative to first_key).
                        let i = first_row + r;
                        let seen_from = window.map_or(0, |w| (i + 1).saturating_sub(w)) - first_key;
                        let (before, row) = row.split_at_mut(seen_from);
                        let last = i - first_key - seen_from;
                        before.iter_mut().for_each(|value| *value = 0.0);
                        if let Some(cap) = softcap {
                            soft_cap(&mut row[..=last], cap);
                        }
                        let max = row[..=last].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0.0;
                        for value in &mut row[..=last] {
                            *value = fast_math::exp(*value - max);
                        }
                        for value in &row[..=last] {
                            sum += *value;
                        }
                        row[..=last].iter_mut().for_each(|value| *value /= sum);
                        row[last + 1..].iter_mut().for_each(|value| *value = 0.0);
                    }
                    unsafe {
                        gemm::gemm(
                            rows,
                            hd,
                            keys,
                            out[first_row * hd..].as_mut_ptr(),
                            1,
                            hd as isize,
                            false,
                            scores.as_ptr(),
                            1,
                            keys as isize,
                            v0[first_key * kv_width..].as_ptr(),
                            1,
                            kv_width as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                }
                out
            })
            .collect();
        let mut attended = vec![0f32; batch.ids.len() * q_width];
        for (&(s, head), out) in jobs.iter().zip(outputs) {
            let start = batch.starts[s] as usize;
            for (i, row) in out.chunks_exact(hd).enumerate() {
                let at = (start + i) * q_width + head * hd;
                attended[at..at + hd].copy_from_slice(row);
            }
        }
        attended
    }
}

/// `up *= activation(gate)`, element by element (generic, so the activation inlines).
fn multiply_activated(up: &mut [f32], gate: &[f32], activation: impl Fn(f32) -> f32 + Sync) {
    up.par_chunks_mut(1 << 14).zip(gate.par_chunks(1 << 14)).for_each(|(up, gate)| {
        for (u, g) in up.iter_mut().zip(gate) {
            *u *= activation(*g);
        }
    });
}

fn silu(g: f32) -> f32 {
    g / (1.0 + fast_math::exp(-g))
}

/// GELU, tanh approximation (transformers' `gelu_pytorch_tanh`).
fn gelu_tanh(g: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * g * (1.0 + (SQRT_2_OVER_PI * (g + 0.044715 * g * g * g)).tanh())
}

fn add(x: &mut [f32], y: &[f32]) {
    x.par_iter_mut().zip(y.par_iter()).for_each(|(a, b)| *a += b);
}
