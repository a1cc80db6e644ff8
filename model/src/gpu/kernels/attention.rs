//! Causal attention with grouped KV heads over packed sequences (`shaders/attention.wgsl`).

use super::attention_check::{AttentionProblem, output_values};
use super::coop::{Fragment, TensorCores};
use super::matmul::Activations;
use super::{Access, Kernel, Recorder, grid};
use anyhow::{Result, anyhow, bail};
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AttentionParams {
    /// Query rows.
    pub rows: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub scale: f32,
    /// Gemma2's attention soft cap; 0 for none.
    pub softcap: f32,
    /// A sliding layer's window ([`window_param`]): the last `window` keys of each range.
    pub window: u32,
    pub _pad: u32,
}

/// A layer's window as the kernels take it: [`NO_WINDOW`] for full causal attention.
pub fn window_param(window: Option<usize>) -> u32 {
    window.map_or(NO_WINDOW, |w| u32::try_from(w).unwrap_or(NO_WINDOW))
}

/// The window parameter of full causal attention: more keys than any batch has.
pub const NO_WINDOW: u32 = u32::MAX;

/// One workgroup per (query row, head); each row attends to its own key range.
pub struct RowAttention {
    kernel: Kernel,
}

impl RowAttention {
    pub fn new(device: &wgpu::Device) -> Result<Self> {
        let kernel = Kernel::new(
            device,
            "attention",
            include_str!("../../../../shaders/attention.wgsl"),
            &[],
            std::mem::size_of::<AttentionParams>() as u64,
            &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
        )?;
        Ok(RowAttention { kernel })
    }

    /// `out[r] = softmax(q[r] k[range]^T * scale) v[range]` per head, where
    /// `key_ranges[r] = (first key, one past the last)`. `keys` is the number of key
    /// rows each query row sees in total (for the FLOP count).
    #[allow(clippy::too_many_arguments)]
    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: AttentionParams,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        key_ranges: &wgpu::Buffer,
        out: &wgpu::Buffer,
        keys: usize,
    ) {
        let flops = 4.0 * keys as f64 * params.heads as f64 * params.head_dim as f64;
        let groups = grid(params.rows as usize * params.heads as usize, 1);
        rec.dispatch(&self.kernel, &params, &[q, k, v, key_ranges, out], groups, flops);
    }
}

/// The tensor-core flash kernel's source (for validation without a device), its output stored
/// as `out` says.
pub fn flash_coop_source(out: Activations) -> String {
    const SHADER: &str = include_str!("../../../../shaders/flash_attention_coop.wgsl");
    let shader = match out {
        Activations::F32 => SHADER.to_owned(),
        Activations::F16 => super::with_f16_output(SHADER),
    };
    super::with_prelude(FLASH_COMMON, &shader)
}

/// Parameters and input bindings shared by the two flash shaders.
const FLASH_COMMON: &str = include_str!("../../../../shaders/flash_common.wgsl");

/// Parameters of `shaders/flash_attention.wgsl` and `shaders/flash_attention_coop.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FlashParams {
    pub heads: u32,
    pub kv_heads: u32,
    /// Must be the head size the kernel was compiled for.
    pub head_dim: u32,
    /// Entries of the blocks buffer used by this dispatch.
    pub blocks: u32,
    /// Usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Gemma2's attention soft cap; 0 for none.
    pub softcap: f32,
    /// A sliding layer's window ([`window_param`]): a query at position i sees keys
    /// i - window + 1 ..= i.
    pub window: u32,
    pub _pad: u32,
}

/// The largest error [`FlashAttention::self_check`] accepts, absolute on outputs of size
/// about 1: f16 inputs cost at most about 1e-3 there, a wrong tile or layout order 1e-1.
pub const FLASH_SELF_CHECK_TOLERANCE: f64 = 1e-2;

/// Largest head size [`FlashAttention`] handles (16 output dimensions per invocation, at
/// most 16 invocations per group of query slots), as for [`RowAttention`].
pub const FLASH_MAX_HEAD_DIM: usize = 256;
/// Largest GQA group (query heads per KV head) [`FlashAttention`] handles.
pub const FLASH_MAX_GROUP: usize = 8;
/// Query slots per invocation (`ROWS` in the shader).
const FLASH_ROWS: usize = 4;
/// Most keys one invocation scores per tile (`KEYS_PER_SLICE`).
const FLASH_KEYS_PER_SLICE: usize = 8;

/// Whether [`FlashAttention`] handles this head size: a multiple of 4 (q, k, v and out are
/// read as vec4) up to [`FLASH_MAX_HEAD_DIM`]. Other sizes use [`RowAttention`].
pub fn flash_supports_head_dim(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(4) && head_dim <= FLASH_MAX_HEAD_DIM
}

fn check_head_dim(head_dim: usize) -> Result<()> {
    if !flash_supports_head_dim(head_dim) {
        bail!("flash attention handles head sizes that are multiples of 4 up to {FLASH_MAX_HEAD_DIM}, not {head_dim}");
    }
    Ok(())
}

/// Tile sizes of the flash kernel, chosen from the head size and the adapter's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashTiles {
    /// Invocations per group of 4 query slots: `ceil(head_dim / 16)`.
    pub slices: u32,
    /// (row, head) query slots per workgroup, a multiple of 4 and at least 8; a block has
    /// `queries / group` rows.
    pub queries: u32,
    /// Keys per K/V tile (at most `8 * slices`).
    pub keys: u32,
    /// K and V tiles side by side (else V overwrites K after the scores: less memory).
    pub split_kv: bool,
}

impl FlashTiles {
    /// Tiles for `head_dim` within `limits`: 64 query slots (fewer if the invocation or
    /// memory limits say so), split K/V tiles when at least 16 keys (or `8 * slices`) fit,
    /// otherwise one shared K/V tile, as many keys as fit up to `8 * slices` and 64.
    pub fn choose(limits: &wgpu::Limits, head_dim: usize) -> Result<Self> {
        check_head_dim(head_dim)?;
        let slices = head_dim.div_ceil(4 * FLASH_ROWS);
        let invocations =
            (limits.max_compute_invocations_per_workgroup.min(limits.max_compute_workgroup_size_x) as usize).min(256);
        let bytes = limits.max_compute_workgroup_storage_size as usize;
        let max_keys = (FLASH_KEYS_PER_SLICE * slices).min(64);
        // Rounded down to a multiple of `slices` so that every invocation scores as many keys.
        let round = |keys: usize| if keys >= slices { keys / slices * slices } else { keys };
        let mut queries = (invocations / slices * FLASH_ROWS).min(64);
        while queries >= FLASH_MAX_GROUP {
            for (split_kv, least) in [(true, 16.min(max_keys)), (false, 1)] {
                let tiles = FlashTiles { slices: slices as u32, queries: queries as u32, keys: 0, split_kv };
                let fixed = tiles.workgroup_bytes(head_dim);
                let per_key = FlashTiles { keys: 1, ..tiles }.workgroup_bytes(head_dim) - fixed;
                let keys = round(bytes.saturating_sub(fixed) / per_key).min(max_keys);
                if keys >= least.max(1) {
                    return Ok(FlashTiles { keys: keys as u32, ..tiles });
                }
            }
            queries = queries / 2 / FLASH_ROWS * FLASH_ROWS;
        }
        bail!(
            "flash attention with head size {head_dim} does not fit this adapter ({bytes} bytes of workgroup memory, {invocations} invocations)"
        )
    }

    /// Invocations per workgroup.
    pub fn workgroup(&self) -> u32 {
        self.queries / FLASH_ROWS as u32 * self.slices
    }

    /// Workgroup memory the kernel declares, in bytes: the K/V tile(s) in vec4 rows padded
    /// by one, the scores (rows padded by one) and three floats per query slot.
    pub fn workgroup_bytes(&self, head_dim: usize) -> usize {
        let (queries, keys) = (self.queries as usize, self.keys as usize);
        let kv = if self.split_kv { 2 } else { 1 } * keys * (head_dim / 4 + 1) * 16;
        kv + 4 * queries * (keys + 1) + 12 * queries
    }

    /// Query rows per block for a GQA group of `group` query heads per KV head.
    pub fn block_rows(&self, group: usize) -> usize {
        (self.queries as usize / group.max(1)).max(1)
    }
}

/// Blocks of one flash-attention dispatch: `[first query row, rows, sequence start, 0]`,
/// at most `block_rows` rows each, never crossing a sequence. Sequence `i` occupies rows
/// `starts[i] .. starts[i] + lengths[i]` of the packed batch.
pub fn attention_blocks(starts: &[u32], lengths: &[u32], block_rows: usize) -> Vec<[u32; 4]> {
    assert_eq!(starts.len(), lengths.len(), "one start per sequence");
    let block_rows = block_rows.max(1) as u32;
    let mut blocks = Vec::new();
    for (&start, &length) in starts.iter().zip(lengths) {
        let mut first = start;
        while first < start + length {
            let rows = block_rows.min(start + length - first);
            blocks.push([first, rows, start, 0]);
            first += rows;
        }
    }
    blocks
}

/// Most blocks [`attention_blocks`] makes for `sequences` sequences of `tokens` tokens in
/// all (for sizing the blocks buffer): `min(S, T) + (T - min(S, T)) / block_rows`.
pub fn max_blocks(tokens: usize, sequences: usize, block_rows: usize) -> usize {
    let nonempty = sequences.min(tokens);
    nonempty + (tokens - nonempty) / block_rows.max(1)
}

/// Floating-point operations of causal attention over sequences of `lengths` (QK^T and
/// PV, two per multiply-add), within `window` keys of each query where one is given, for
/// `--profile`.
pub fn causal_attention_flops(lengths: &[u32], heads: usize, head_dim: usize, window: Option<usize>) -> f64 {
    4.0 * visible_pairs(lengths, window) as f64 * heads as f64 * head_dim as f64
}

/// The (query, key) pairs causal attention scores over sequences of `lengths`, within
/// `window` keys of each query where one is given.
pub fn visible_pairs(lengths: &[u32], window: Option<usize>) -> usize {
    let pairs = |n: usize| n * (n + 1) / 2;
    lengths
        .iter()
        .map(|&n| match window {
            // The first w queries see 1..=w keys, the rest w each.
            Some(w) if (n as usize) > w => pairs(w) + (n as usize - w) * w,
            _ => pairs(n as usize),
        })
        .sum()
}

/// Causal prefill attention, flash style: one workgroup per (block of query rows of one
/// sequence, KV head). K/V tiles in workgroup memory are shared by the block's rows and by
/// every query head of the KV head's group; online softmax in f32; key tiles above the
/// block's causal diagonal are never loaded. Compiled for one head size, a multiple of 4
/// ([`flash_supports_head_dim`]).
pub struct FlashAttention {
    kernel: Kernel,
    head_dim: usize,
    tiles: FlashTiles,
    /// `flash_attention_coop.wgsl` (tensor cores) rather than `flash_attention.wgsl`.
    tensor_cores: bool,
    /// How the output is stored: f16 only from the tensor-core kernel, for an output
    /// projection reading f16 x.
    output: Activations,
}

/// Output fragments per row of the tensor-core flash kernel (its accumulators).
const FLASH_COOP_MAX_FRAGMENTS: usize = 8;

/// Largest head size of the tensor-core flash kernel: eight output fragments (128 with
/// 16x16 fragments, 64 with 8x8).
pub fn flash_coop_max_head_dim(fragment: Fragment) -> usize {
    FLASH_COOP_MAX_FRAGMENTS * fragment.side()
}

/// How the tensor-core flash kernel is built, beyond its head size: the shader's
/// `LOADS_FIRST`, `ONE_PASS` and `RESCALE_MARGIN`, and how the output is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashCoopOptions {
    /// Issue all of a tile's K/V loads before converting any (`STEERLM_FLASH_LOADS_FIRST=1`).
    pub loads_first: bool,
    /// One pass with lazily rescaled accumulators instead of two (`STEERLM_FLASH_ONE_PASS=1`).
    pub one_pass: bool,
    /// How far a tile's maximum may pass a slot's reference before the one-pass kernel
    /// rescales (8: probabilities stay below e^8; 0 rescales at every new maximum).
    pub rescale_margin: f32,
    pub output: Activations,
}

impl FlashCoopOptions {
    /// The default kernel, writing `output`.
    pub fn new(output: Activations) -> Self {
        FlashCoopOptions { loads_first: false, one_pass: false, rescale_margin: 8.0, output }
    }

    /// [`FlashCoopOptions::new`] with what `STEERLM_FLASH_LOADS_FIRST` and
    /// `STEERLM_FLASH_ONE_PASS` ask (unmeasured on hardware, so on request).
    pub fn from_env(output: Activations) -> Self {
        let asks = |name: &str| super::switch(name, std::env::var(name).ok().as_deref()).unwrap_or(false);
        FlashCoopOptions {
            loads_first: asks("STEERLM_FLASH_LOADS_FIRST"),
            one_pass: asks("STEERLM_FLASH_ONE_PASS"),
            ..Self::new(output)
        }
    }
}

/// Whether the tensor-core flash kernel handles this head size: a multiple of the fragment
/// up to [`flash_coop_max_head_dim`].
pub fn flash_coop_supports_head_dim(head_dim: usize, fragment: Fragment) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(fragment.side()) && head_dim <= flash_coop_max_head_dim(fragment)
}

/// Query slots of one block of the tensor-core flash kernel (four subgroups of one
/// fragment of rows each) and keys per K/V tile (two fragments).
fn flash_coop_queries_and_keys(fragment: Fragment) -> (usize, usize) {
    (4 * fragment.side(), 2 * fragment.side())
}

/// Workgroup memory of `flash_attention_coop.wgsl` for `head_dim`: f16 q, K and V tiles
/// with rows padded by 8, f32 scores, f16 probabilities (rows padded by 8), a float per
/// invocation (the partial maxima and sums) and one per slot (the row sums). With 16x16
/// fragments: 64 slots, 32 keys, 128 invocations.
pub fn flash_coop_workgroup_bytes(head_dim: usize, fragment: Fragment) -> usize {
    let (queries, keys) = flash_coop_queries_and_keys(fragment);
    // Four subgroups of side^2 / 8 (32 for 16x16 fragments, 8 for 8x8).
    let invocations = 4 * fragment.side() * fragment.side() / 8;
    2 * (queries + 2 * keys) * (head_dim + 8)
        + 4 * queries * keys
        + 2 * queries * (keys + 8)
        + 4 * (invocations + queries)
        // The one-pass kernel's rescale flag.
        + 4
}

impl FlashAttention {
    /// Compiles the kernel for `head_dim` with tiles chosen from the device's limits.
    pub fn new(device: &wgpu::Device, head_dim: usize) -> Result<Self> {
        let tiles = FlashTiles::choose(&device.limits(), head_dim)?;
        Self::with_tiles(device, head_dim, tiles)
    }

    /// Compiles the kernel with the given tiles (benchmarks and tests).
    pub fn with_tiles(device: &wgpu::Device, head_dim: usize, tiles: FlashTiles) -> Result<Self> {
        check_head_dim(head_dim)?;
        let valid = tiles.slices as usize == head_dim.div_ceil(4 * FLASH_ROWS)
            && tiles.keys >= 1
            && tiles.keys as usize <= FLASH_KEYS_PER_SLICE * tiles.slices as usize
            && (tiles.queries as usize).is_multiple_of(FLASH_ROWS)
            && tiles.queries as usize >= FLASH_MAX_GROUP;
        if !valid {
            bail!("flash attention tiles {tiles:?} do not fit head size {head_dim}");
        }
        let constants = [
            ("HEAD_DIM", head_dim as f64),
            ("SLICES", tiles.slices as f64),
            ("QUERIES", tiles.queries as f64),
            ("KEYS", tiles.keys as f64),
            ("SPLIT_KV", if tiles.split_kv { 1.0 } else { 0.0 }),
            ("WORKGROUP", tiles.workgroup() as f64),
        ];
        let kernel = Kernel::new(
            device,
            "flash_attention",
            &super::with_prelude(FLASH_COMMON, include_str!("../../../../shaders/flash_attention.wgsl")),
            &constants,
            std::mem::size_of::<FlashParams>() as u64,
            &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
        )?;
        Ok(FlashAttention { kernel, head_dim, tiles, tensor_cores: false, output: Activations::F32 })
    }

    /// Compiles `flash_attention_coop.wgsl` (QK^T and PV on tensor cores, f16 inputs, f32
    /// sums) for `head_dim` and `cores`. Needs f16 shaders, subgroups of a fixed width and
    /// cooperative matrices; blocks of 64 query slots with 16x16 fragments (like
    /// [`FlashAttention::new`]'s), 32 with 8x8.
    ///
    /// `STEERLM_FLASH_LOADS_FIRST=1` stages K and V with every load issued before any is
    /// converted, and `STEERLM_FLASH_ONE_PASS=1` runs one pass with lazily rescaled
    /// accumulators ([`FlashCoopOptions`]), for measuring them against the default on
    /// hardware.
    ///
    /// The output is stored as `output` says (f16: saturated, for an output projection that
    /// reads f16 x).
    pub fn tensor_cores(
        device: &wgpu::Device,
        cores: TensorCores,
        head_dim: usize,
        output: Activations,
    ) -> Result<Self> {
        Self::tensor_cores_with(device, cores, head_dim, FlashCoopOptions::from_env(output))
    }

    /// [`FlashAttention::tensor_cores`] with its options given.
    pub fn tensor_cores_with(
        device: &wgpu::Device,
        cores: TensorCores,
        head_dim: usize,
        options: FlashCoopOptions,
    ) -> Result<Self> {
        let FlashCoopOptions { loads_first, one_pass, rescale_margin, output } = options;
        let fragment = cores.fragment;
        if !flash_coop_supports_head_dim(head_dim, fragment) {
            bail!(
                "tensor-core flash attention on {fragment} matrices handles head sizes that are multiples of {} up \
                 to {}, not {head_dim}",
                fragment.side(),
                flash_coop_max_head_dim(fragment)
            );
        }
        let needed =
            wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        if !device.features().contains(needed) {
            bail!("tensor-core flash attention needs the device features {:?}", needed - device.features());
        }
        let Some(subgroup) = cores.kernel_subgroup() else {
            bail!("tensor-core flash attention needs subgroups of a fixed width (8, 16 or 32), not {cores}");
        };
        let invocations = 4 * subgroup;
        let limits = device.limits();
        let bytes = flash_coop_workgroup_bytes(head_dim, fragment);
        if bytes > limits.max_compute_workgroup_storage_size as usize
            || limits.max_compute_invocations_per_workgroup < invocations
        {
            bail!(
                "tensor-core flash attention with head size {head_dim} needs {bytes} bytes of workgroup memory and \
                 {invocations} invocations; the device allows {} and {}",
                limits.max_compute_workgroup_storage_size,
                limits.max_compute_invocations_per_workgroup
            );
        }
        let source = cores.specialize("flash_attention_coop", &flash_coop_source(output))?;
        let kernel = Kernel::new(
            device,
            if output == Activations::F16 { "flash_coop_f16" } else { "flash_attention_coop" },
            &source,
            &[
                ("HEAD_DIM", head_dim as f64),
                ("LOADS_FIRST", if loads_first { 1.0 } else { 0.0 }),
                ("ONE_PASS", if one_pass { 1.0 } else { 0.0 }),
                ("RESCALE_MARGIN", rescale_margin as f64),
            ],
            std::mem::size_of::<FlashParams>() as u64,
            &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
        )?;
        // Only `queries` (slots per block) means anything here.
        let (queries, keys) = flash_coop_queries_and_keys(fragment);
        let tiles = FlashTiles {
            slices: (head_dim / fragment.side()) as u32,
            queries: queries as u32,
            keys: keys as u32,
            split_kv: true,
        };
        Ok(FlashAttention { kernel, head_dim, tiles, tensor_cores: true, output })
    }

    /// Runs this kernel once on a small problem shaped like a model's attention (its GQA
    /// `group`, `scale` and soft cap; two KV heads; sequences of 1, 37 and 130 tokens, which
    /// cover ragged query blocks and key tiles) and returns the largest absolute error
    /// against an f64 reference, infinite where an output is NaN (a row never written).
    /// Cooperative matrices are experimental in wgpu and drivers; the model checks the
    /// tensor-core kernel with this at load and falls back to the f32 flash kernel when it
    /// is over [`FLASH_SELF_CHECK_TOLERANCE`].
    pub fn self_check(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        group: usize,
        scale: f32,
        softcap: Option<f32>,
    ) -> Result<f64> {
        let kv_heads = 2;
        let mut problem = AttentionProblem::new(&[1, 37, 130], group * kv_heads, kv_heads, self.head_dim);
        problem.scale = scale;
        problem.softcap = softcap;
        let want = problem.reference();
        // A wgpu error while it runs fails the check, rather than being kept for the load.
        let run = || problem.run_flash(device, queue, self);
        let bytes = crate::gpu::errors::capture(device, || "running its check problem".to_owned(), run)??;
        let got = output_values(&bytes, self.output == Activations::F16, want.len());
        Ok(got.iter().zip(&want).fold(0f64, |worst, (&g, &w)| {
            let error = (g as f64 - w as f64).abs();
            if error.is_nan() { f64::INFINITY } else { worst.max(error) }
        }))
    }

    /// How the output is stored.
    pub fn output(&self) -> Activations {
        self.output
    }

    /// Whether this is the tensor-core kernel.
    pub fn uses_tensor_cores(&self) -> bool {
        self.tensor_cores
    }

    pub fn tiles(&self) -> FlashTiles {
        self.tiles
    }

    /// Whether this kernel serves `heads` query heads over `kv_heads` KV heads (a group of
    /// at most [`FLASH_MAX_GROUP`], and at most the workgroup's query slots).
    pub fn supports(&self, heads: usize, kv_heads: usize) -> bool {
        kv_heads > 0
            && heads.is_multiple_of(kv_heads)
            && heads / kv_heads <= FLASH_MAX_GROUP
            && heads / kv_heads <= self.tiles.queries as usize
    }

    /// Query rows per block (the `block_rows` of [`attention_blocks`]) for this model.
    pub fn block_rows(&self, heads: usize, kv_heads: usize) -> usize {
        self.tiles.block_rows(heads / kv_heads.max(1))
    }

    /// `out = causal softmax(q k^T * scale) v` for every row of every block in `blocks`
    /// (the first `number_of_blocks` entries, made by [`attention_blocks`] with
    /// [`Self::block_rows`]). q and out are `[tokens, heads * head_dim]`, k and v
    /// `[tokens, kv_heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: FlashParams,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        blocks: &wgpu::Buffer,
        out: &wgpu::Buffer,
        number_of_blocks: usize,
        flops: f64,
    ) {
        assert_eq!(params.head_dim as usize, self.head_dim, "flash attention compiled for another head size");
        assert!(self.supports(params.heads as usize, params.kv_heads as usize), "unsupported GQA group");
        let params = FlashParams { blocks: number_of_blocks as u32, ..params };
        if number_of_blocks == 0 {
            return;
        }
        let groups = grid(number_of_blocks * params.kv_heads as usize, 1);
        rec.dispatch(&self.kernel, &params, &[q, k, v, blocks, out], groups, flops);
    }
}

/// Seconds per dispatch of [`FlashAttention`] and [`RowAttention`] over one batch (for
/// benches; see [`time_attention`]).
#[derive(Clone, Debug)]
pub struct AttentionTimes {
    pub shape: String,
    pub tiles: FlashTiles,
    pub flash_s: f64,
    pub row_s: f64,
    pub flops: f64,
}

impl std::fmt::Display for AttentionTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: flash {:.1} ms ({:.2} GFLOP/s), rows {:.1} ms ({:.2} GFLOP/s), rows/flash {:.2}x; tiles {:?}",
            self.shape,
            self.flash_s * 1e3,
            self.flops / self.flash_s * 1e-9,
            self.row_s * 1e3,
            self.flops / self.row_s * 1e-9,
            self.row_s / self.flash_s,
            self.tiles
        )
    }
}

/// Times causal attention over `sequences` sequences of `length` tokens (within `window`
/// keys where given) with both kernels: the median of `iterations` submissions each, after
/// one warm-up.
#[allow(clippy::too_many_arguments)]
pub fn time_attention(
    gpu: &crate::gpu::Gpu,
    sequences: usize,
    length: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    iterations: usize,
) -> Result<AttentionTimes> {
    use wgpu::util::DeviceExt;
    let device = &gpu.device;
    let tokens = sequences * length;
    let buffer = |data: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("attention timing"),
            contents: data,
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let pattern = |count: usize, seed: usize| -> Vec<f32> {
        (0..count).map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0 - 1.0).collect()
    };
    let q = buffer(bytemuck::cast_slice(&pattern(tokens * heads * head_dim, 1)));
    let k = buffer(bytemuck::cast_slice(&pattern(tokens * kv_heads * head_dim, 2)));
    let v = buffer(bytemuck::cast_slice(&pattern(tokens * kv_heads * head_dim, 3)));
    let out = buffer(bytemuck::cast_slice(&vec![0f32; tokens * heads * head_dim]));
    let starts: Vec<u32> = (0..sequences).map(|s| (s * length) as u32).collect();
    let lengths = vec![length as u32; sequences];
    let ranges: Vec<[u32; 2]> = starts.iter().flat_map(|&s| (s..s + length as u32).map(move |t| [s, t + 1])).collect();
    let ranges = buffer(bytemuck::cast_slice(&ranges));
    let flash = FlashAttention::new(device, head_dim)?;
    let rows = RowAttention::new(device)?;
    let block_list = attention_blocks(&starts, &lengths, flash.block_rows(heads, kv_heads));
    let blocks = buffer(bytemuck::cast_slice(&block_list));
    let scale = 1.0 / (head_dim as f32).sqrt();
    let flops = causal_attention_flops(&lengths, heads, head_dim, window);
    let (h, kvh, hd) = (heads as u32, kv_heads as u32, head_dim as u32);
    fn time<'k>(gpu: &crate::gpu::Gpu, iterations: usize, record: &dyn Fn(&mut Recorder<'k>)) -> Result<f64> {
        let mut cache = super::BindCache::default();
        let mut seconds = Vec::new();
        for _ in 0..=iterations.max(1) {
            let mut rec = Recorder::new(&gpu.device);
            record(&mut rec);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            let began = std::time::Instant::now();
            rec.encode(&gpu.device, &gpu.queue, &mut cache, &mut encoder, false)?;
            gpu.queue.submit([encoder.finish()]);
            gpu.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
            seconds.push(began.elapsed().as_secs_f64());
        }
        seconds.remove(0);
        seconds.sort_by(f64::total_cmp);
        Ok(seconds[seconds.len() / 2])
    }
    let flash_s = time(gpu, iterations, &|rec| {
        let params = FlashParams {
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            blocks: 0,
            scale,
            softcap: 0.0,
            window: window_param(window),
            _pad: 0,
        };
        flash.record(rec, params, &q, &k, &v, &blocks, &out, block_list.len(), flops)
    })?;
    let row_s = time(gpu, iterations, &|rec| {
        let params = AttentionParams {
            rows: tokens as u32,
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            scale,
            softcap: 0.0,
            window: window_param(window),
            _pad: 0,
        };
        rows.record(rec, params, &q, &k, &v, &ranges, &out, visible_pairs(&lengths, window))
    })?;
    Ok(AttentionTimes {
        shape: match window {
            Some(w) => format!("{sequences} x {length} tokens, {heads}/{kv_heads} heads x {head_dim}, window {w}"),
            None => format!("{sequences} x {length} tokens, {heads}/{kv_heads} heads x {head_dim}"),
        },
        tiles: flash.tiles(),
        flash_s,
        row_s,
        flops,
    })
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
