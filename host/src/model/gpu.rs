//! The reward model's forward pass as wgpu compute shaders (`shaders/*.wgsl`).
//!
//! Weights are uploaded once in their stored dtype (half types stay packed two per
//! u32 and are widened in the shaders); a tensor larger than the adapter's storage
//! binding limit is split by rows. A batch is packed without padding: every kernel
//! works on the concatenated tokens, and attention finds each token's sequence start.
//! All dispatches of a forward pass go into one command buffer.

use super::Batch;
use super::config::ModelConfig;
use super::layout::{LinearTensors, ModelTensors, NormTensors};
use super::rope::RopeTable;
use super::weights::{DType, TensorView};
use anyhow::{Context, Result, anyhow, bail};
use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

/// Which adapter to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterChoice {
    /// Only a hardware GPU; `None` when there is none.
    HardwareOnly,
    /// Any adapter, software ones (lavapipe) included.
    Any,
}

/// Finds an adapter and opens a device with the adapter's own limits.
pub fn open_device(choice: AdapterChoice) -> Result<Option<(wgpu::Device, wgpu::Queue, wgpu::AdapterInfo)>> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        // We want the adapter's real limits (large bindings), not privacy buckets.
        apply_limit_buckets: false,
    };
    let adapter = match pollster::block_on(instance.request_adapter(&options)) {
        Ok(adapter) => adapter,
        Err(_) if choice == AdapterChoice::HardwareOnly => return Ok(None),
        Err(e) => {
            bail!("no wgpu adapter found ({e}); on Linux without a GPU, install Mesa's lavapipe (mesa-vulkan-drivers)")
        }
    };
    let info = adapter.get_info();
    if choice == AdapterChoice::HardwareOnly && info.device_type == wgpu::DeviceType::Cpu {
        return Ok(None);
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("steerlm"),
        required_features: wgpu::Features::empty(),
        required_limits: adapter.limits(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .with_context(|| format!("opening the wgpu device {}", info.name))?;
    Ok(Some((device, queue, info)))
}

/// A weight matrix `[rows, cols]` on the device, possibly in several row ranges.
struct DeviceTensor {
    dtype: DType,
    cols: usize,
    /// (first row, row count, buffer)
    parts: Vec<(usize, usize, wgpu::Buffer)>,
}

struct DeviceLinear {
    weight: DeviceTensor,
    bias: Option<wgpu::Buffer>,
    out_features: usize,
    in_features: usize,
}

struct DeviceNorm {
    weight: wgpu::Buffer,
    bias: Option<wgpu::Buffer>,
}

struct DeviceLayer {
    input_norm: DeviceNorm,
    q: DeviceLinear,
    k: DeviceLinear,
    v: DeviceLinear,
    o: DeviceLinear,
    post_norm: DeviceNorm,
    gate: Option<DeviceLinear>,
    up: DeviceLinear,
    down: DeviceLinear,
}

/// One compiled pipeline per kernel (and per weight dtype where it matters).
struct Pipelines {
    matmul: [wgpu::ComputePipeline; 3],
    embedding: [wgpu::ComputePipeline; 3],
    rms_norm: wgpu::ComputePipeline,
    layer_norm_1p: wgpu::ComputePipeline,
    rotary: wgpu::ComputePipeline,
    attention: wgpu::ComputePipeline,
    /// `silu(gate) * up` and `relu(up)^2`.
    mlp_gated: wgpu::ComputePipeline,
    mlp_squared_relu: wgpu::ComputePipeline,
    residual_add: wgpu::ComputePipeline,
    last_token: wgpu::ComputePipeline,
}

pub struct GpuModel {
    config: ModelConfig,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pipelines: Pipelines,
    embed: DeviceTensor,
    layers: Vec<DeviceLayer>,
    final_norm: DeviceNorm,
    score: DeviceLinear,
    rope_cos: wgpu::Buffer,
    rope_sin: wgpu::Buffer,
    /// Bound to unused bias slots (a binding cannot be empty).
    dummy: wgpu::Buffer,
    /// Most tokens whose widest activation fits one storage binding.
    max_tokens_per_pass: usize,
}

fn dtype_index(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
    }
}

fn pipeline(device: &wgpu::Device, name: &str, source: &str, constants: &[(&str, f64)]) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
        cache: None,
    })
}

impl Pipelines {
    fn new(device: &wgpu::Device) -> Self {
        let per_dtype =
            |name: &str, source: &str| [0.0, 1.0, 2.0].map(|d| pipeline(device, name, source, &[("DTYPE", d)]));
        Pipelines {
            matmul: per_dtype("matmul", include_str!("../../../shaders/matmul.wgsl")),
            embedding: per_dtype("embedding", include_str!("../../../shaders/embedding.wgsl")),
            rms_norm: pipeline(device, "rms_norm", include_str!("../../../shaders/rms_norm.wgsl"), &[]),
            layer_norm_1p: pipeline(device, "layer_norm_1p", include_str!("../../../shaders/layer_norm_1p.wgsl"), &[]),
            rotary: pipeline(device, "rotary", include_str!("../../../shaders/rotary.wgsl"), &[]),
            attention: pipeline(device, "attention", include_str!("../../../shaders/attention.wgsl"), &[]),
            mlp_gated: pipeline(
                device,
                "mlp_gated",
                include_str!("../../../shaders/mlp_activation.wgsl"),
                &[("GATED", 1.0)],
            ),
            mlp_squared_relu: pipeline(
                device,
                "mlp_squared_relu",
                include_str!("../../../shaders/mlp_activation.wgsl"),
                &[("GATED", 0.0)],
            ),
            residual_add: pipeline(device, "residual_add", include_str!("../../../shaders/residual_add.wgsl"), &[]),
            last_token: pipeline(device, "last_token", include_str!("../../../shaders/last_token.wgsl"), &[]),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    out_stride: u32,
    out_offset: u32,
    has_bias: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    rows: u32,
    hidden: u32,
    eps: f32,
    has_bias: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Workgroup counts for `count` invocations of `size`, spread over two dimensions when
/// one would pass the 65535 limit (shaders rebuild the index from both).
fn grid(count: usize, size: usize) -> (u32, u32) {
    let groups = count.div_ceil(size).max(1);
    if groups <= 65535 { (groups as u32, 1) } else { (65535, groups.div_ceil(65535) as u32) }
}

impl GpuModel {
    pub fn new(
        config: &ModelConfig,
        tensors: &ModelTensors,
        adapter: (wgpu::Device, wgpu::Queue, wgpu::AdapterInfo),
    ) -> Result<Self> {
        Self::with_weight_part_limit(config, tensors, adapter, None)
    }

    /// Like [`GpuModel::new`], splitting weights into parts of at most `part_bytes`
    /// (tests use this to exercise the split path on small models).
    pub fn with_weight_part_limit(
        config: &ModelConfig,
        tensors: &ModelTensors,
        (device, queue, info): (wgpu::Device, wgpu::Queue, wgpu::AdapterInfo),
        part_bytes: Option<usize>,
    ) -> Result<Self> {
        for (what, k) in [("hidden_size", config.hidden_size), ("intermediate_size", config.intermediate_size)] {
            if k % 4 != 0 {
                bail!("the wgpu path needs {what} ({k}) to be a multiple of 4; use --device cpu");
            }
        }
        if config.head_dim > 256 {
            bail!("the wgpu path supports head_dim up to 256, this model has {}", config.head_dim);
        }
        let limits = device.limits();
        let max_binding = (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size) as usize;
        let pipelines = Pipelines::new(&device);
        let upload = Uploader { device: &device, max_binding: part_bytes.unwrap_or(max_binding).min(max_binding) };
        let layers = tensors
            .layers
            .iter()
            .map(|l| {
                Ok(DeviceLayer {
                    input_norm: upload.norm(&l.input_norm),
                    q: upload.linear(&l.q)?,
                    k: upload.linear(&l.k)?,
                    v: upload.linear(&l.v)?,
                    o: upload.linear(&l.o)?,
                    post_norm: upload.norm(&l.post_norm),
                    gate: l.gate.as_ref().map(|g| upload.linear(g)).transpose()?,
                    up: upload.linear(&l.up)?,
                    down: upload.linear(&l.down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rope = RopeTable::new(config, config.max_positions);
        let widest = [config.hidden_size, config.intermediate_size, config.num_heads * config.head_dim]
            .into_iter()
            .max()
            .expect("three widths");
        let model = GpuModel {
            embed: upload.tensor(&tensors.embed)?,
            final_norm: upload.norm(&tensors.final_norm),
            score: upload.linear(&tensors.score)?,
            rope_cos: upload.f32_buffer("rope cos", &rope.cos),
            rope_sin: upload.f32_buffer("rope sin", &rope.sin),
            dummy: upload.f32_buffer("dummy", &[0.0]),
            layers,
            max_tokens_per_pass: (max_binding / (4 * widest)).max(1),
            config: config.clone(),
            pipelines,
            device,
            queue,
            info,
        };
        Ok(model)
    }

    /// How many buffers the embedding table was split into.
    pub fn embedding_parts(&self) -> usize {
        self.embed.parts.len()
    }

    pub fn adapter_name(&self) -> String {
        format!("wgpu: {} ({:?}, {:?})", self.info.name, self.info.backend, self.info.device_type)
    }

    /// Scores of every sequence, in passes of whole sequences that fit the binding limit.
    pub fn forward(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let mut scores = Vec::with_capacity(batch.lengths.len());
        let mut group: Vec<&[u32]> = Vec::new();
        let mut tokens = 0;
        for (&start, &len) in batch.starts.iter().zip(&batch.lengths) {
            let len = len as usize;
            if len > self.max_tokens_per_pass {
                bail!(
                    "a sequence of {len} tokens does not fit this adapter's buffers (at most {})",
                    self.max_tokens_per_pass
                );
            }
            if tokens + len > self.max_tokens_per_pass {
                scores.extend(self.forward_pass(&Batch::pack(&group))?);
                group.clear();
                tokens = 0;
            }
            group.push(&batch.ids[start as usize..start as usize + len]);
            tokens += len;
        }
        if !group.is_empty() {
            scores.extend(self.forward_pass(&Batch::pack(&group))?);
        }
        Ok(scores)
    }

    fn forward_pass(&self, batch: &Batch) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let tokens = batch.ids.len();
        let sequences = batch.lengths.len();
        let (h, hd, ffn) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_width, kv_width) = (c.num_heads * hd, c.num_kv_heads * hd);

        let seq_start: Vec<u32> =
            batch.starts.iter().zip(&batch.lengths).flat_map(|(&s, &n)| std::iter::repeat_n(s, n as usize)).collect();
        let last_rows: Vec<u32> = batch.starts.iter().zip(&batch.lengths).map(|(&s, &n)| s + n - 1).collect();
        let ids = self.u32_buffer("ids", &batch.ids);
        let positions = self.u32_buffer("positions", &batch.positions);
        let seq_start = self.u32_buffer("sequence starts", &seq_start);
        let last_rows = self.u32_buffer("last rows", &last_rows);

        let x = self.scratch("residual", tokens * h);
        let normed = self.scratch("normed", tokens * h);
        let q = self.scratch("q", tokens * q_width);
        let k = self.scratch("k", tokens * kv_width);
        let v = self.scratch("v", tokens * kv_width);
        let attended = self.scratch("attended", tokens * q_width);
        let delta = self.scratch("delta", tokens * h);
        let up = self.scratch("up", tokens * ffn);
        let gate = self.scratch("gate", tokens * ffn);
        let last = self.scratch("last tokens", sequences * h);
        let last_normed = self.scratch("last tokens normed", sequences * h);
        let scores = self.scratch("scores", sequences * self.score.out_features);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("scores readback"),
            size: (sequences * self.score.out_features * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
            for (row_start, rows, table) in &self.embed.parts {
                let params = [tokens as u32, h as u32, *row_start as u32, *rows as u32];
                self.dispatch(
                    &mut pass,
                    &self.pipelines.embedding[dtype_index(self.embed.dtype)],
                    &params,
                    &[&ids, table, &x],
                    grid(tokens * h, 256),
                );
            }
            for layer in &self.layers {
                self.norm(&mut pass, &layer.input_norm, &x, &normed, tokens);
                self.linear(&mut pass, &layer.q, &normed, &q, tokens);
                self.linear(&mut pass, &layer.k, &normed, &k, tokens);
                self.linear(&mut pass, &layer.v, &normed, &v, tokens);
                self.rotary(&mut pass, &q, &positions, tokens, c.num_heads);
                self.rotary(&mut pass, &k, &positions, tokens, c.num_kv_heads);
                let params = AttentionParams {
                    tokens: tokens as u32,
                    heads: c.num_heads as u32,
                    kv_heads: c.num_kv_heads as u32,
                    head_dim: hd as u32,
                    scale: 1.0 / (hd as f32).sqrt(),
                    _pad: [0; 3],
                };
                self.dispatch(
                    &mut pass,
                    &self.pipelines.attention,
                    &params,
                    &[&q, &k, &v, &seq_start, &attended],
                    grid(tokens * c.num_heads, 1), // one workgroup per (token, head)
                );
                self.linear(&mut pass, &layer.o, &attended, &delta, tokens);
                self.add(&mut pass, &x, &delta, tokens * h);

                self.norm(&mut pass, &layer.post_norm, &x, &normed, tokens);
                self.linear(&mut pass, &layer.up, &normed, &up, tokens);
                if let Some(gate_proj) = &layer.gate {
                    self.linear(&mut pass, gate_proj, &normed, &gate, tokens);
                }
                let count = [(tokens * ffn) as u32, 0, 0, 0];
                let activation =
                    if layer.gate.is_some() { &self.pipelines.mlp_gated } else { &self.pipelines.mlp_squared_relu };
                self.dispatch(&mut pass, activation, &count, &[&up, &gate], grid(tokens * ffn, 256));
                self.linear(&mut pass, &layer.down, &up, &delta, tokens);
                self.add(&mut pass, &x, &delta, tokens * h);
            }
            let params = [sequences as u32, h as u32, 0, 0];
            self.dispatch(
                &mut pass,
                &self.pipelines.last_token,
                &params,
                &[&x, &last_rows, &last],
                grid(sequences * h, 256),
            );
            self.norm(&mut pass, &self.final_norm, &last, &last_normed, sequences);
            self.linear(&mut pass, &self.score, &last_normed, &scores, sequences);
        }
        encoder.copy_buffer_to_buffer(&scores, 0, &staging, 0, staging.size());
        self.queue.submit([encoder.finish()]);

        let slice = staging.slice(..);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
        receiver
            .recv()
            .map_err(|_| anyhow!("the GPU never answered"))?
            .map_err(|e| anyhow!("reading the scores back: {e}"))?;
        let values: Vec<f32> = {
            let view = slice.get_mapped_range().map_err(|e| anyhow!("reading the scores back: {e}"))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        staging.unmap();
        Ok(values.chunks_exact(self.score.out_features).map(<[f32]>::to_vec).collect())
    }

    fn u32_buffer(&self, label: &str, values: &[u32]) -> wgpu::Buffer {
        let contents: &[u8] = if values.is_empty() { &[0; 4] } else { bytemuck::cast_slice(values) };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE,
        })
    }

    fn scratch(&self, label: &str, floats: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (floats.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Binds `params` as binding 0 and `buffers` as bindings 1.., then dispatches.
    fn dispatch<P: Pod>(
        &self,
        pass: &mut wgpu::ComputePass,
        pipeline: &wgpu::ComputePipeline,
        params: &P,
        buffers: &[&wgpu::Buffer],
        (x, y): (u32, u32),
    ) {
        let params = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() }];
        for (i, buffer) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: buffer.as_entire_binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    fn linear(
        &self,
        pass: &mut wgpu::ComputePass,
        linear: &DeviceLinear,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        rows: usize,
    ) {
        let pipeline = &self.pipelines.matmul[dtype_index(linear.weight.dtype)];
        for (row_start, part_rows, weight) in &linear.weight.parts {
            let params = MatmulParams {
                m: rows as u32,
                n: *part_rows as u32,
                k: linear.in_features as u32,
                out_stride: linear.out_features as u32,
                out_offset: *row_start as u32,
                has_bias: linear.bias.is_some() as u32,
                _pad: [0; 2],
            };
            let bias = linear.bias.as_ref().unwrap_or(&self.dummy);
            // 8x8 invocations of 4x4 outputs: 32x32 outputs per workgroup.
            let groups = (part_rows.div_ceil(32) as u32, rows.div_ceil(32) as u32);
            self.dispatch(pass, pipeline, &params, &[input, weight, bias, output], groups);
        }
    }

    fn norm(
        &self,
        pass: &mut wgpu::ComputePass,
        norm: &DeviceNorm,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        rows: usize,
    ) {
        let c = &self.config;
        let params = NormParams {
            rows: rows as u32,
            hidden: c.hidden_size as u32,
            eps: c.norm_eps,
            has_bias: norm.bias.is_some() as u32,
        };
        let pipeline =
            if c.architecture.layer_norm_1p() { &self.pipelines.layer_norm_1p } else { &self.pipelines.rms_norm };
        let bias = norm.bias.as_ref().unwrap_or(&self.dummy);
        self.dispatch(pass, pipeline, &params, &[input, &norm.weight, bias, output], grid(rows, 1));
    }

    fn rotary(
        &self,
        pass: &mut wgpu::ComputePass,
        x: &wgpu::Buffer,
        positions: &wgpu::Buffer,
        tokens: usize,
        heads: usize,
    ) {
        let c = &self.config;
        if c.rotary_dim == 0 {
            return;
        }
        let params = [tokens as u32, heads as u32, c.head_dim as u32, c.rotary_dim as u32];
        let count = tokens * heads * c.rotary_dim / 2;
        self.dispatch(
            pass,
            &self.pipelines.rotary,
            &params,
            &[x, positions, &self.rope_cos, &self.rope_sin],
            grid(count, 256),
        );
    }

    fn add(&self, pass: &mut wgpu::ComputePass, x: &wgpu::Buffer, y: &wgpu::Buffer, count: usize) {
        self.dispatch(pass, &self.pipelines.residual_add, &[count as u32, 0, 0, 0], &[x, y], grid(count, 256));
    }
}

/// Uploads tensors, splitting those larger than one binding.
struct Uploader<'a> {
    device: &'a wgpu::Device,
    max_binding: usize,
}

impl Uploader<'_> {
    fn tensor(&self, view: &TensorView) -> Result<DeviceTensor> {
        let (rows, cols) = match view.shape {
            [rows, cols] => (*rows, *cols),
            other => bail!("expected a matrix, got shape {other:?}"),
        };
        let row_bytes = cols * view.dtype.size();
        if row_bytes % 4 != 0 {
            bail!("tensor rows of {cols} {:?} values are not a whole number of 32-bit words", view.dtype);
        }
        let rows_per_part = (self.max_binding / row_bytes).max(1);
        let mut parts = Vec::new();
        let mut row = 0;
        while row < rows {
            let count = rows_per_part.min(rows - row);
            let bytes = &view.bytes[row * row_bytes..(row + count) * row_bytes];
            let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("weight"),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE,
            });
            parts.push((row, count, buffer));
            row += count;
        }
        Ok(DeviceTensor { dtype: view.dtype, cols, parts })
    }

    fn linear(&self, t: &LinearTensors) -> Result<DeviceLinear> {
        let weight = self.tensor(&t.weight)?;
        debug_assert_eq!(weight.cols, t.in_features);
        Ok(DeviceLinear {
            weight,
            bias: t.bias.as_ref().map(|b| self.f32_buffer("bias", &b.to_f32())),
            out_features: t.out_features,
            in_features: t.in_features,
        })
    }

    fn norm(&self, t: &NormTensors) -> DeviceNorm {
        DeviceNorm {
            weight: self.f32_buffer("norm weight", &t.weight.to_f32()),
            bias: t.bias.as_ref().map(|b| self.f32_buffer("norm bias", &b.to_f32())),
        }
    }

    fn f32_buffer(&self, label: &str, values: &[f32]) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(values),
            usage: wgpu::BufferUsages::STORAGE,
        })
    }
}

/// Times the matmul kernel alone: `[m, k] @ [n, k]^T` in f32, `iterations` dispatches
/// in one submission. Returns seconds per dispatch and the adapter's name.
pub fn time_matmul(m: usize, n: usize, k: usize, iterations: usize) -> Result<(f64, String)> {
    let (device, queue, info) = open_device(AdapterChoice::Any)?.expect("Any returns an adapter or an error");
    let matmul = pipeline(&device, "matmul", include_str!("../../../shaders/matmul.wgsl"), &[("DTYPE", 0.0)]);
    let filled = |label: &str, floats: usize| {
        let values: Vec<f32> = (0..floats).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(&values),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let (x, w, bias) = (filled("x", m * k), filled("w", n * k), filled("bias", n));
    let y = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("y"),
        size: (m * n * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let params = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        out_stride: n as u32,
        out_offset: 0,
        has_bias: 0,
        _pad: [0; 2],
    };
    let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("params"),
        contents: bytemuck::bytes_of(&params),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &matmul.get_bind_group_layout(0),
        entries: &[&params, &x, &w, &bias, &y]
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect::<Vec<_>>(),
    });
    let run = |count: usize| -> Result<f64> {
        let started = std::time::Instant::now();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(&matmul);
            pass.set_bind_group(0, &bind_group, &[]);
            for _ in 0..count {
                pass.dispatch_workgroups(n.div_ceil(32) as u32, m.div_ceil(32) as u32, 1);
            }
        }
        queue.submit([encoder.finish()]);
        device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
        Ok(started.elapsed().as_secs_f64())
    };
    run(1)?; // warm-up: pipeline compilation and first-use costs
    Ok((run(iterations)? / iterations as f64, info.name))
}
