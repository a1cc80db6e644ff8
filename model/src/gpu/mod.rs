//! The reward model's forward pass as wgpu compute shaders (`shaders/*.wgsl`).
//!
//! - [`device`]: the adapter, its features and limits, and which kernel variants it gets;
//! - [`errors`]: wgpu's errors (a driver refusing a shader, memory running out) as `Result`s;
//! - [`kernels`]: one wrapper per shader, and the recorder that batches dispatches;
//! - [`upload`]: weights on the device; [`workspace`]: scratch buffers kept between batches;
//! - [`forward`]: the layer sequence.
//!
//! A batch is packed without padding: every kernel works on the concatenated tokens, and
//! attention finds each token's sequence from its key range. All dispatches of a pass go
//! into one command buffer and one submission.

pub mod device;
pub mod errors;
pub mod forward;
pub mod kernels;
pub mod upload;
pub mod workspace;

pub use device::{AdapterChoice, Capabilities, Gpu, KernelPlan, open_device};

use super::Precision;
use super::arch::NormKind;
use super::config::ModelConfig;
use super::layout::ModelTensors;
use super::rope::RopeTable;
use super::weights;
use anyhow::{Result, bail};
use errors::capture;
use kernels::KernelTimes;
use kernels::attention::{FLASH_SELF_CHECK_TOLERANCE, FlashAttention, RowAttention};
use kernels::embedding::Embedding;
use kernels::last_token::GatherRows;
use kernels::matmul::{Activations, Matmul, MatmulVariant, SELF_CHECK_TOLERANCE, self_check_failure};
use kernels::norm::Norm;
use kernels::rotary::Rotary;
use std::sync::Mutex;
use upload::{DeviceLinear, DeviceNorm, DeviceTensor, Uploader};
use workspace::{Widths, Workspace};

/// The largest storage binding used, whatever the adapter allows (see `with_options`).
const MAX_BINDING_BYTES: u64 = 1 << 31;
const TENSOR_CORES_FAILED: &str = "the tensor-core kernel failed on this adapter";
const FLASH_TENSOR_CORES_FAILED: &str = "the tensor-core flash kernel failed on this adapter";

struct DeviceLayer {
    input_norm: DeviceNorm,
    q: DeviceLinear,
    k: DeviceLinear,
    v: DeviceLinear,
    o: DeviceLinear,
    /// Qwen3's per-head query and key RMSNorm weights.
    q_norm: Option<wgpu::Buffer>,
    k_norm: Option<wgpu::Buffer>,
    post_norm: DeviceNorm,
    /// Gemma2's norms of the attention and MLP outputs (added to the residual by the norm).
    attention_out_norm: Option<DeviceNorm>,
    mlp_out_norm: Option<DeviceNorm>,
    gate: Option<DeviceLinear>,
    up: DeviceLinear,
    down: DeviceLinear,
}

/// Every kernel a forward pass uses, compiled once at load.
struct Kernels {
    matmul: Matmul,
    embedding: Embedding,
    norm: Norm,
    /// RMSNorm over each head of q and k, for architectures with q/k norm.
    head_norm: Option<Norm>,
    rotary: Rotary,
    attention: RowAttention,
    /// `None` where the plan or the model's head shape rules it out.
    flash: Option<FlashAttention>,
    gather: GatherRows,
}

pub struct GpuModel {
    config: ModelConfig,
    gpu: Gpu,
    plan: KernelPlan,
    kernels: Kernels,
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
    workspace: Mutex<Option<Workspace>>,
    /// What the load changed from the plan, for the load message: linear weights f16
    /// cannot hold (left in their dtype), a tensor-core kernel that failed to compile.
    load_notes: Vec<String>,
    /// How the layers' norms store their output for the q/k/v, up and gate projections
    /// (f16 where the plan asks and every one of those weights is f16), and how the final
    /// norm stores its output for the score head.
    normed: Activations,
    final_normed: Activations,
    /// How the down projection reads the gated MLP activation: f16 (written so by the gate
    /// projection) with f16 activations, every layer gated and every down weight f16.
    mlp_input: Activations,
}

impl GpuModel {
    pub fn new(config: &ModelConfig, tensors: &ModelTensors, gpu: Gpu, precision: Precision) -> Result<Self> {
        if precision == Precision::F16 && gpu.tensor_cores().is_none() {
            bail!(
                "--precision f16 needs f16 cooperative matrices (16x16x16 or 8x8x8, with f16 shaders and subgroups); \
                 {} offers none (see `steerlm gpu-info`)",
                gpu.info.name
            );
        }
        let plan = KernelPlan::choose(&gpu.info, &gpu.caps, precision);
        let model = Self::with_options(config, tensors, gpu, plan, None)?;
        if precision == Precision::F16 && !model.plan.f16_weights {
            bail!("--precision f16: the tensor-core kernels did not load on this adapter: {}", model.adapter_name());
        }
        Ok(model)
    }

    /// [`GpuModel::new`] with a given kernel plan (benches compare plans in one run), and
    /// weights split into parts of at most `part_bytes` (tests use this to exercise the
    /// split path on small models).
    pub fn with_options(
        config: &ModelConfig,
        tensors: &ModelTensors,
        gpu: Gpu,
        plan: KernelPlan,
        part_bytes: Option<usize>,
    ) -> Result<Self> {
        let widths = [
            ("hidden_size", config.hidden_size),
            ("intermediate_size", config.intermediate_size),
            ("num_attention_heads x head_dim", config.num_heads * config.head_dim),
        ];
        for (what, k) in widths {
            if k % 4 != 0 {
                bail!("the wgpu path needs {what} ({k}) to be a multiple of 4; use --device cpu");
            }
        }
        if config.head_dim > 256 {
            bail!("the wgpu path supports head_dim up to 256, this model has {}", config.head_dim);
        }
        let mut plan = plan;
        let device = &gpu.device;
        let limits = &gpu.caps.limits;
        let supported = |flash: FlashAttention| -> Result<FlashAttention> {
            if flash.supports(config.num_heads, config.num_kv_heads) {
                Ok(flash)
            } else {
                bail!(
                    "a GQA group of {} query heads per KV head is more than flash attention handles",
                    config.num_heads / config.num_kv_heads
                )
            }
        };
        // The tensor-core flash kernel, if it passes its check problem shaped like this
        // model's attention (cooperative matrices are experimental in wgpu and drivers).
        let checked = |kernel: FlashAttention| -> Result<FlashAttention> {
            let group = config.num_heads / config.num_kv_heads;
            match kernel.self_check(device, &gpu.queue, group, config.attention_scale, config.attention_softcap) {
                Ok(worst) if worst <= FLASH_SELF_CHECK_TOLERANCE => Ok(kernel),
                Ok(worst) => bail!(
                    "{FLASH_TENSOR_CORES_FAILED}: it gave wrong results on a check problem (error {worst:.2e} > \
                     {FLASH_SELF_CHECK_TOLERANCE:e})"
                ),
                Err(why) => bail!("{FLASH_TENSOR_CORES_FAILED}: {why:#}"),
            }
        };
        // The plan's attention kernel, else the next one down: tensor cores, f32 flash, rows.
        let mut flash = None;
        if let device::AttentionVariant::FlashTensorCores(cores) = plan.attention {
            match FlashAttention::tensor_cores(device, cores, config.head_dim, Activations::F32)
                .and_then(supported)
                .and_then(checked)
            {
                Ok(kernel) => flash = Some(kernel),
                Err(why) => {
                    plan.attention = device::AttentionVariant::Flash;
                    plan.attention_reason = format!("{why:#}; the f32 flash kernel");
                }
            }
        }
        if plan.attention == device::AttentionVariant::Flash {
            match FlashAttention::new(device, config.head_dim).and_then(supported) {
                Ok(kernel) => flash = Some(kernel),
                Err(why) => {
                    plan.attention = device::AttentionVariant::Rows;
                    plan.attention_reason = format!("{why:#}");
                }
            }
        }
        // At most 2 GiB: element indices (of 4-byte words at least) then fit the shaders' u32
        // arithmetic. Vulkan and DX12 cap bindings there anyway; Metal allows far more.
        let max_binding =
            limits.max_storage_buffer_binding_size.min(limits.max_buffer_size).min(MAX_BINDING_BYTES) as usize;
        let widest = widths.into_iter().map(|(_, width)| width).max().expect("three widths");
        let max_tokens_per_pass = (max_binding / (4 * widest)).max(1);
        let mut matmul = Self::matmul(&gpu, &mut plan)?;
        let mut norm = Norm::new(device, config.architecture.norm())?;
        let mut load_notes = Vec::new();
        if plan.f16_activations {
            // The norm's f16 output and the matmul's f16 input (a pipeline each, unused if
            // the other fails).
            if let Err(why) = norm.add_f16_output(device).and_then(|()| matmul.add_f16_input(device, &gpu.queue)) {
                plan.f16_activations = false;
                load_notes.push(format!("f16 activations off: {why:#}"));
            }
        }
        let mut kernels = Kernels {
            matmul,
            embedding: Embedding::new(device)?,
            norm,
            head_norm: config.architecture.family.qk_norm.then(|| Norm::new(device, NormKind::Rms)).transpose()?,
            rotary: Rotary::new(device)?,
            attention: RowAttention::new(device)?,
            flash,
            gather: GatherRows::new(device)?,
        };
        let upload = Uploader {
            device,
            max_binding: part_bytes.unwrap_or(max_binding).min(max_binding),
            f16_linear: plan.f16_weights,
            kept_dtype: Default::default(),
        };
        let weight_bytes = tensors.matrix_bytes();
        let uploading = || format!("uploading {:.1} GB of weights to the GPU", weight_bytes as f64 / 1e9);
        let layers = capture(device, uploading, || {
            tensors
                .layers
                .iter()
                .map(|l| {
                    Ok(DeviceLayer {
                        input_norm: upload.norm(&l.input_norm),
                        q: upload.linear(&l.q)?,
                        k: upload.linear(&l.k)?,
                        v: upload.linear(&l.v)?,
                        o: upload.linear(&l.o)?,
                        q_norm: l.q_norm.as_ref().map(|t| upload.f32_buffer("q norm", &t.to_f32())),
                        k_norm: l.k_norm.as_ref().map(|t| upload.f32_buffer("k norm", &t.to_f32())),
                        post_norm: upload.norm(&l.post_norm),
                        attention_out_norm: l.attention_out_norm.as_ref().map(|n| upload.norm(n)),
                        mlp_out_norm: l.mlp_out_norm.as_ref().map(|n| upload.norm(n)),
                        gate: l.gate.as_ref().map(|g| upload.linear(g)).transpose()?,
                        up: upload.linear(&l.up)?,
                        down: upload.linear(&l.down)?,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })??;
        // The rotary table needs no more positions than one pass holds tokens: a 1M-token
        // context's table would be 1 GB, and more than one binding on some adapters.
        let rope = RopeTable::new(config, config.max_positions.min(max_tokens_per_pass));
        let (score, embed, final_norm, rope_cos, rope_sin, dummy) = capture(device, uploading, || -> Result<_> {
            Ok((
                upload.linear(&tensors.score)?,
                upload.tensor(&tensors.embed)?,
                upload.norm(&tensors.final_norm),
                upload.f32_buffer("rope cos", &rope.cos),
                upload.f32_buffer("rope sin", &rope.sin),
                upload.f32_buffer("dummy", &[0.0]),
            ))
        })??;
        let kept_dtype = upload.kept_dtype.take();
        let half_input = |linear: &DeviceLinear| linear.weight.dtype == weights::DType::F16;
        let (mut normed, mut final_normed, mut mlp_input) = (Activations::F32, Activations::F32, Activations::F32);
        if plan.f16_activations {
            let layer_inputs_half =
                layers.iter().all(|l| [&l.q, &l.k, &l.v, &l.up].into_iter().chain(&l.gate).all(half_input));
            if layer_inputs_half {
                normed = Activations::F16;
                if half_input(&score) {
                    final_normed = Activations::F16;
                }
                if layers.iter().all(|l| l.gate.is_some() && half_input(&l.down)) {
                    mlp_input = Activations::F16;
                }
                // The tensor-core flash kernel again, writing f16 for the output projection.
                if let (Some(flash), device::AttentionVariant::FlashTensorCores(cores)) =
                    (&kernels.flash, plan.attention)
                    && flash.uses_tensor_cores()
                    && layers.iter().all(|l| half_input(&l.o))
                {
                    match FlashAttention::tensor_cores(device, cores, config.head_dim, Activations::F16)
                        .and_then(checked)
                    {
                        Ok(half) => kernels.flash = Some(half),
                        Err(why) => load_notes.push(format!("attention output kept f32: {why:#}")),
                    }
                }
            } else {
                plan.f16_activations = false;
                load_notes.push("f16 activations off: a q/k/v, up or gate weight stayed in its dtype".to_owned());
            }
        }
        if plan.matmul_reason.starts_with(TENSOR_CORES_FAILED) {
            load_notes.push(plan.matmul_reason.clone());
        }
        if plan.attention_reason.starts_with(FLASH_TENSOR_CORES_FAILED) {
            load_notes.push(plan.attention_reason.clone());
        }
        if !kept_dtype.is_empty() {
            load_notes.push(format!("kept in their dtype (the f32 kernel): {}", kept_dtype.join("; ")));
        }
        gpu.errors.check(|| "loading the model onto the GPU".to_owned())?;
        Ok(GpuModel {
            embed,
            final_norm,
            score,
            rope_cos,
            rope_sin,
            dummy,
            layers,
            max_tokens_per_pass,
            config: config.clone(),
            kernels,
            plan,
            gpu,
            workspace: Mutex::new(None),
            load_notes,
            normed,
            final_normed,
            mlp_input,
        })
    }

    /// The plan's matmul; if the tensor-core kernel does not compile on this adapter, or
    /// gets its check problem wrong ([`Matmul::self_check`]; cooperative matrices are
    /// experimental in wgpu and drivers), the tiled f32 kernel, with the reason in the plan.
    fn matmul(gpu: &Gpu, plan: &mut KernelPlan) -> Result<Matmul> {
        let device = &gpu.device;
        let checked = Matmul::new(device, plan.matmul).and_then(|matmul| match matmul.self_check(device, &gpu.queue) {
            Ok(worst) if worst <= SELF_CHECK_TOLERANCE => Ok(matmul),
            checked => bail!("it {}", self_check_failure(checked)),
        });
        match (checked, plan.matmul) {
            (Ok(matmul), _) => Ok(matmul),
            (Err(why), MatmulVariant::Cooperative { fallback, .. }) => {
                plan.matmul = MatmulVariant::Tiled(fallback);
                plan.f16_weights = false;
                plan.matmul_reason = format!("{TENSOR_CORES_FAILED} ({why:#}); tiled f32");
                Matmul::new(device, plan.matmul)
            }
            (Err(why), _) => Err(why),
        }
    }

    /// How many buffers the embedding table was split into.
    pub fn embedding_parts(&self) -> usize {
        self.embed.parts.len()
    }

    pub fn adapter_name(&self) -> String {
        let info = &self.gpu.info;
        let mut name = format!(
            "wgpu: {} ({:?}, {:?}; matmul {}{}, attention {})",
            info.name,
            info.backend,
            info.device_type,
            self.plan.matmul.name(),
            self.f16_inputs(),
            self.plan.attention.name()
        );
        for note in &self.load_notes {
            name += &format!("; {note}");
        }
        name
    }

    /// Which matmul inputs are stored as f16 (`STEERLM_F16_ACTIVATIONS`), for the adapter
    /// line: " reading f16 activations (norms, gate, attention)", or nothing.
    fn f16_inputs(&self) -> String {
        let attention = self.kernels.flash.as_ref().is_some_and(|f| f.output() == Activations::F16);
        let writers: Vec<&str> = [
            (self.normed == Activations::F16, "norms"),
            (self.mlp_input == Activations::F16, "gate"),
            (attention, "attention"),
        ]
        .into_iter()
        .filter_map(|(half, name)| half.then_some(name))
        .collect();
        if writers.is_empty() { String::new() } else { format!(" reading f16 activations ({})", writers.join(", ")) }
    }

    /// Whether the adapter has timestamp queries (`--profile`).
    pub fn can_profile(&self) -> bool {
        self.gpu.caps.timestamps
    }

    /// Scores of every sequence, in passes of whole sequences that fit the binding limit.
    pub fn forward(&self, batch: &super::Batch) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward_timed(batch, false)?.0)
    }

    /// [`GpuModel::forward`], with per-kernel GPU times when `profile` is set and the
    /// adapter has timestamp queries.
    pub fn forward_timed(&self, batch: &super::Batch, profile: bool) -> Result<(Vec<Vec<f32>>, Option<KernelTimes>)> {
        let profile = profile && self.gpu.caps.timestamps;
        let mut scores = Vec::with_capacity(batch.lengths.len());
        let mut times = profile.then(KernelTimes::default);
        let mut group: Vec<&[u32]> = Vec::new();
        let mut tokens = 0;
        let mut run = |group: &mut Vec<&[u32]>| -> Result<()> {
            let (pass_scores, pass_times) = self.forward_pass(&super::Batch::pack(group), profile)?;
            scores.extend(pass_scores);
            if let (Some(total), Some(pass)) = (times.as_mut(), pass_times) {
                total.add(&pass);
            }
            group.clear();
            Ok(())
        };
        for (&start, &len) in batch.starts.iter().zip(&batch.lengths) {
            let len = len as usize;
            if len > self.max_tokens_per_pass {
                bail!(
                    "a sequence of {len} tokens does not fit this adapter's buffers (at most {})",
                    self.max_tokens_per_pass
                );
            }
            if tokens + len > self.max_tokens_per_pass {
                run(&mut group)?;
                tokens = 0;
            }
            group.push(&batch.ids[start as usize..start as usize + len]);
            tokens += len;
        }
        if !group.is_empty() {
            run(&mut group)?;
        }
        Ok((scores, times))
    }

    fn widths(&self) -> Widths {
        let c = &self.config;
        Widths {
            hidden: c.hidden_size,
            q: c.num_heads * c.head_dim,
            kv: c.num_kv_heads * c.head_dim,
            ffn: c.intermediate_size,
            labels: self.score.out_features,
            attention_block_rows: self.kernels.flash.as_ref().map(|f| f.block_rows(c.num_heads, c.num_kv_heads)),
            half_mlp: self.mlp_input == Activations::F16,
        }
    }
}
