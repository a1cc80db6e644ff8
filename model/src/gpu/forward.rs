//! The layer sequence of one forward pass, recorded into one submission.
//!
//! Per layer: norm, q/k/v projections (and Qwen3's per-head q/k norm), rotary, attention
//! (scaled, and soft-capped for Gemma2), then the output projection adds itself to the
//! residual stream (matmul epilogue, no separate add). The MLP's up projection is stored,
//! the gate projection multiplies silu(gate) or gelu_tanh(gate) into it (or the up
//! projection squares its ReLU), and the down projection adds itself to the residual.
//! Gemma2 normalises the attention and MLP outputs first: the projection lands in scratch
//! and the norm adds its result to the residual (one pass, no separate add).
//!
//! With f16 activations (`STEERLM_F16_ACTIVATIONS=1`) the norms ahead of the q/k/v, up,
//! gate and score projections store f16, and so do the gate projection (the gated MLP
//! activation) and tensor-core flash attention (its output); the tensor-core matmuls read
//! those instead of converting f32 themselves. The residual stream, the up projection and
//! the last layer's attention output stay f32.
//!
//! Only the last token of each sequence is scored, so the last layer computes keys and
//! values for every token but queries, attention output, MLP, final norm and head only
//! for each sequence's last token.

use super::GpuModel;
use super::errors::capture;
use super::kernels::attention::{
    AttentionParams, FlashParams, attention_blocks, causal_attention_flops, visible_pairs, window_param,
};
use super::kernels::embedding::EmbeddingParams;
use super::kernels::last_token::GatherParams;
use super::kernels::matmul::{Activations, Epilogue, MatmulParams};
use super::kernels::norm::NormParams;
use super::kernels::rotary::RotaryParams;
use super::kernels::{KernelTimes, Recorder, read_buffer};
use super::upload::{DeviceLinear, DeviceNorm};
use super::workspace::Workspace;
use crate::Batch;
use crate::arch::MlpKind;
use anyhow::{Result, anyhow};

/// How a norm writes its output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NormWrite {
    /// Stored as f32, or as f16 for tensor-core matmuls that read f16 x.
    Store(Activations),
    /// Added to the output: Gemma2's normalised attention and MLP outputs joining the residual.
    AddTo,
}

impl GpuModel {
    pub(super) fn forward_pass(&self, batch: &Batch, profile: bool) -> Result<(Vec<Vec<f32>>, Option<KernelTimes>)> {
        let tokens = batch.ids.len();
        let sequences = batch.lengths.len();
        let mut slot = self.workspace.lock().map_err(|_| anyhow!("an earlier forward pass panicked"))?;
        let device = &self.gpu.device;
        if !slot.as_ref().is_some_and(|w| w.fits(tokens, sequences)) {
            // Free the old buffers before making larger ones.
            *slot = None;
            let making = || format!("making scratch buffers for a pass of {tokens} tokens");
            let workspace = capture(device, making, || {
                Workspace::new(device, self.widths(), tokens, sequences, self.max_tokens_per_pass)
            })?;
            *slot = Some(workspace);
        }
        let ws = slot.as_mut().expect("workspace just made");
        let labels = self.score.out_features;
        let score_bytes = (sequences * labels * 4) as u64;
        let running = || format!("running a pass of {sequences} sequences, {tokens} tokens");
        let timestamps = capture(device, running, || -> Result<_> {
            let flash_blocks = self.write_inputs(ws, batch);
            let mut rec = Recorder::new(device);
            self.record(&mut rec, ws, batch, flash_blocks);
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
            let timestamps = rec.encode(device, &self.gpu.queue, &mut ws.binds, &mut encoder, profile)?;
            encoder.copy_buffer_to_buffer(&ws.scores, 0, &ws.readback, 0, score_bytes);
            self.gpu.queue.submit([encoder.finish()]);
            Ok(timestamps)
        });
        // A pass that failed may have left the cached buffers or bind groups invalid.
        let timestamps = timestamps.and_then(|t| t).inspect_err(|_| *slot = None)?;
        let ws = slot.as_mut().expect("workspace kept");

        let bytes = read_buffer(device, &ws.readback)?;
        self.gpu.errors.check(running).inspect_err(|_| *slot = None)?;
        let mut values: Vec<f32> = bytemuck::cast_slice(&bytes[..score_bytes as usize]).to_vec();
        if let Some(cap) = self.config.final_softcap {
            // A handful of values per sequence: capped here rather than in a kernel.
            crate::soft_cap(&mut values, cap);
        }
        let times = timestamps.map(|t| t.read(&self.gpu.device, &self.gpu.queue)).transpose()?;
        Ok((values.chunks_exact(labels).map(<[f32]>::to_vec).collect(), times))
    }

    /// Token ids, positions, each query row's key range and flash attention's blocks for
    /// this batch; returns the number of blocks.
    fn write_inputs(&self, ws: &Workspace, batch: &Batch) -> usize {
        let queue = &self.gpu.queue;
        let mut key_ranges = Vec::with_capacity(2 * batch.ids.len());
        let (mut last_rows, mut last_positions, mut last_key_ranges) = (Vec::new(), Vec::new(), Vec::new());
        for (&start, &len) in batch.starts.iter().zip(&batch.lengths) {
            for t in start..start + len {
                key_ranges.extend([start, t + 1]);
            }
            last_rows.push(start + len - 1);
            last_positions.push(len - 1);
            last_key_ranges.extend([start, start + len]);
        }
        let blocks: Vec<u32> = match self.widths().attention_block_rows {
            Some(rows) => attention_blocks(&batch.starts, &batch.lengths, rows).into_iter().flatten().collect(),
            None => Vec::new(),
        };
        for (buffer, values) in [
            (&ws.attention_blocks, &blocks),
            (&ws.ids, &batch.ids),
            (&ws.positions, &batch.positions),
            (&ws.key_ranges, &key_ranges),
            (&ws.last_rows, &last_rows),
            (&ws.last_positions, &last_positions),
            (&ws.last_key_ranges, &last_key_ranges),
        ] {
            if !values.is_empty() {
                queue.write_buffer(buffer, 0, bytemuck::cast_slice(values));
            }
        }
        blocks.len() / 4
    }

    fn record<'k>(&'k self, rec: &mut Recorder<'k>, ws: &Workspace, batch: &Batch, flash_blocks: usize) {
        let c = &self.config;
        let kernels = &self.kernels;
        let (tokens, sequences) = (batch.ids.len(), batch.lengths.len());
        let (h, hd) = (c.hidden_size, c.head_dim);

        for (row_start, rows, table) in &self.embed.parts {
            let params = EmbeddingParams {
                tokens: tokens as u32,
                hidden: h as u32,
                row_start: *row_start as u32,
                rows: *rows as u32,
                scale: c.embedding_scale,
                _pad: [0; 3],
            };
            kernels.embedding.record(rec, params, self.embed.dtype, &ws.ids, table, &ws.x);
        }
        // Rows of `h` values stored as `stored` says (gathered as 4-byte words).
        let gather = |rec: &mut Recorder<'k>, from: &wgpu::Buffer, to: &wgpu::Buffer, stored: Activations| {
            let words = if stored == Activations::F16 { h / 2 } else { h };
            let params = GatherParams { sequences: sequences as u32, hidden: words as u32, _pad: [0; 2] };
            kernels.gather.record(rec, params, from, &ws.last_rows, to);
        };
        // How the layers' norms store `normed` for the projections that read it.
        let normed_as = self.normed;
        let attention = |rows: usize, window: Option<usize>| AttentionParams {
            rows: rows as u32,
            heads: c.num_heads as u32,
            kv_heads: c.num_kv_heads as u32,
            head_dim: hd as u32,
            scale: c.attention_scale,
            softcap: c.attention_softcap.unwrap_or(0.0),
            window: window_param(window),
            _pad: 0,
        };
        let rotary = |rows: usize, heads: usize| RotaryParams {
            rows: rows as u32,
            heads: heads as u32,
            head_dim: hd as u32,
            rotary_dim: c.rotary_dim as u32,
        };
        let (cos, sin) = (&self.rope_cos, &self.rope_sin);
        for (i, layer) in self.layers.iter().enumerate() {
            let window = c.attention_window(i);
            let last = i + 1 == self.layers.len();
            self.norm(rec, &layer.input_norm, &ws.x, &ws.normed, tokens, NormWrite::Store(normed_as));
            match &layer.k_norm {
                // The projection lands in scratch (`attended`, free until attention) and
                // the per-head norm writes it where rotary and attention read it.
                Some(k_norm) => {
                    self.linear(rec, &layer.k, (&ws.normed, normed_as), &ws.attended, tokens, Epilogue::Store);
                    self.head_norm(rec, k_norm, &ws.attended, &ws.k, tokens * c.num_kv_heads);
                }
                None => self.linear(rec, &layer.k, (&ws.normed, normed_as), &ws.k, tokens, Epilogue::Store),
            }
            self.linear(rec, &layer.v, (&ws.normed, normed_as), &ws.v, tokens, Epilogue::Store);
            kernels.rotary.record(rec, rotary(tokens, c.num_kv_heads), &ws.k, &ws.positions, cos, sin);
            // From here on the last layer works on one row per sequence.
            let (rows, x, normed) = if last {
                gather(rec, &ws.normed, &ws.last_normed, normed_as);
                gather(rec, &ws.x, &ws.last_x, Activations::F32);
                (sequences, &ws.last_x, &ws.last_normed)
            } else {
                (tokens, &ws.x, &ws.normed)
            };
            // The keys the queries see in all (for the FLOP count): each sequence's last
            // token sees all of it, or its window.
            let (positions, key_ranges, keys) = if last {
                let seen = |&n: &u32| window.map_or(n as usize, |w| w.min(n as usize));
                (&ws.last_positions, &ws.last_key_ranges, batch.lengths.iter().map(seen).sum())
            } else {
                (&ws.positions, &ws.key_ranges, visible_pairs(&batch.lengths, window))
            };
            match &layer.q_norm {
                Some(q_norm) => {
                    self.linear(rec, &layer.q, (normed, normed_as), &ws.attended, rows, Epilogue::Store);
                    self.head_norm(rec, q_norm, &ws.attended, &ws.q, rows * c.num_heads);
                }
                None => self.linear(rec, &layer.q, (normed, normed_as), &ws.q, rows, Epilogue::Store),
            }
            kernels.rotary.record(rec, rotary(rows, c.num_heads), &ws.q, positions, cos, sin);
            match (&kernels.flash, last) {
                (Some(flash), false) => {
                    let params = FlashParams {
                        heads: c.num_heads as u32,
                        kv_heads: c.num_kv_heads as u32,
                        head_dim: hd as u32,
                        blocks: 0, // set by record
                        scale: c.attention_scale,
                        softcap: c.attention_softcap.unwrap_or(0.0),
                        window: window_param(window),
                        _pad: 0,
                    };
                    let flops = causal_attention_flops(&batch.lengths, c.num_heads, hd, window);
                    let (q, k, v, blocks) = (&ws.q, &ws.k, &ws.v, &ws.attention_blocks);
                    flash.record(rec, params, q, k, v, blocks, &ws.attended, flash_blocks, flops);
                }
                _ => kernels.attention.record(
                    rec,
                    attention(rows, window),
                    &ws.q,
                    &ws.k,
                    &ws.v,
                    key_ranges,
                    &ws.attended,
                    keys,
                ),
            }
            // The flash kernel may store f16 for the output projection; the row kernel of the
            // last layer stores f32.
            let attended = match (&kernels.flash, last) {
                (Some(flash), false) => (&ws.attended, flash.output()),
                _ => (&ws.attended, Activations::F32),
            };
            self.residual(rec, &layer.o, attended, layer.attention_out_norm.as_ref(), x, normed, rows);

            self.norm(rec, &layer.post_norm, x, normed, rows, NormWrite::Store(normed_as));
            match &layer.gate {
                Some(gate) => {
                    self.linear(rec, &layer.up, (normed, normed_as), &ws.mlp, rows, Epilogue::Store);
                    let activation = match c.architecture.mlp() {
                        MlpKind::GeluTanhGated => Epilogue::GeluTanhGate,
                        _ => Epilogue::SiluGate,
                    };
                    match (self.mlp_input, activation.to_half()) {
                        // The gate writes its f16 result for the down projection to read.
                        (Activations::F16, Some(to_half)) => {
                            let output = (&ws.mlp, Some(&ws.mlp_half));
                            self.linear_into(rec, gate, (normed, normed_as), output, rows, to_half);
                        }
                        _ => self.linear(rec, gate, (normed, normed_as), &ws.mlp, rows, activation),
                    }
                }
                None => self.linear(rec, &layer.up, (normed, normed_as), &ws.mlp, rows, Epilogue::SquaredRelu),
            }
            let mlp = match self.mlp_input {
                Activations::F16 => (&ws.mlp_half, Activations::F16),
                Activations::F32 => (&ws.mlp, Activations::F32),
            };
            self.residual(rec, &layer.down, mlp, layer.mlp_out_norm.as_ref(), x, normed, rows);
        }
        if self.layers.is_empty() {
            gather(rec, &ws.x, &ws.last_x, Activations::F32);
        }
        let final_as = self.final_normed;
        self.norm(rec, &self.final_norm, &ws.last_x, &ws.last_normed, sequences, NormWrite::Store(final_as));
        self.linear(rec, &self.score, (&ws.last_normed, final_as), &ws.scores, sequences, Epilogue::Store);
    }

    /// `output (epilogue)= input @ W^T (+ b)` over `rows` rows, one dispatch per weight part;
    /// `input` is a buffer and how its values are stored.
    fn linear<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        linear: &'k DeviceLinear,
        input: (&wgpu::Buffer, Activations),
        output: &wgpu::Buffer,
        rows: usize,
        epilogue: Epilogue,
    ) {
        self.linear_into(rec, linear, input, (output, None), rows, epilogue);
    }

    /// [`Self::linear`] with the matmul's second, f16 output, which the `*ToHalf` epilogues
    /// write instead of the first.
    fn linear_into<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        linear: &'k DeviceLinear,
        (input, stored): (&wgpu::Buffer, Activations),
        (output, output_half): (&wgpu::Buffer, Option<&wgpu::Buffer>),
        rows: usize,
        epilogue: Epilogue,
    ) {
        let bias = linear.bias.as_ref().unwrap_or(&self.dummy);
        for (row_start, part_rows, weight) in &linear.weight.parts {
            let params = MatmulParams {
                m: rows as u32,
                n: *part_rows as u32,
                k: linear.in_features as u32,
                out_stride: linear.out_features as u32,
                out_offset: *row_start as u32,
                has_bias: linear.bias.is_some() as u32,
                epilogue: epilogue as u32,
                _pad: 0,
            };
            let dtype = linear.weight.dtype;
            self.kernels.matmul.record(rec, params, dtype, stored, input, weight, bias, output, output_half);
        }
    }

    /// `x += input @ W^T`: the projection adds itself to the residual stream in its
    /// epilogue, or (Gemma2) lands in `scratch` and its norm adds the normalised rows to `x`.
    #[allow(clippy::too_many_arguments)]
    fn residual<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        linear: &'k DeviceLinear,
        input: (&wgpu::Buffer, Activations),
        out_norm: Option<&'k DeviceNorm>,
        x: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
        rows: usize,
    ) {
        match out_norm {
            Some(norm) => {
                self.linear(rec, linear, input, scratch, rows, Epilogue::Store);
                self.norm(rec, norm, scratch, x, rows, NormWrite::AddTo);
            }
            None => self.linear(rec, linear, input, x, rows, Epilogue::Accumulate),
        }
    }

    /// Qwen3's q/k norm: RMSNorm over `rows` head vectors of `head_dim` values.
    fn head_norm<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        weight: &wgpu::Buffer,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        rows: usize,
    ) {
        let c = &self.config;
        let kernel = self.kernels.head_norm.as_ref().expect("q/k norm weights come with the q/k norm kernel");
        let params = NormParams {
            rows: rows as u32,
            hidden: c.head_dim as u32,
            eps: c.norm_eps,
            has_bias: 0,
            accumulate: 0,
            _pad: [0; 3],
        };
        kernel.record(rec, params, Activations::F32, input, weight, &self.dummy, output);
    }

    /// The norm of `rows` rows of `input`, stored in `output` or added to it.
    fn norm<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        norm: &DeviceNorm,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        rows: usize,
        write: NormWrite,
    ) {
        let c = &self.config;
        let params = NormParams {
            rows: rows as u32,
            hidden: c.hidden_size as u32,
            eps: c.norm_eps,
            has_bias: norm.bias.is_some() as u32,
            accumulate: (write == NormWrite::AddTo) as u32,
            _pad: [0; 3],
        };
        let stored = match write {
            NormWrite::Store(stored) => stored,
            NormWrite::AddTo => Activations::F32,
        };
        let bias = norm.bias.as_ref().unwrap_or(&self.dummy);
        self.kernels.norm.record(rec, params, stored, input, &norm.weight, bias, output);
    }
}
