//! `y = x @ W^T (+ bias)`, then an epilogue, for the linear layers (`shaders/matmul*.wgsl`).
//! `x` is `[m, k]` f32; `W` is `[n, k]` in its stored dtype; `y` is f32 with row stride
//! `out_stride`, written from column `out_offset` (one row-slice of a split weight).
//!
//! Three variants share these bindings and semantics (see [`MatmulVariant`]):
//! register-blocked (`matmul.wgsl`), workgroup-tiled (`matmul_tiled.wgsl`, tile sizes from
//! a [`TileConfig`]) and tensor-core (`matmul_coop.wgsl` and `matmul_coop_wide.wgsl`, f16
//! weights, see [`f16_weights`] and [`CoopTile`]).

use super::coop::{Fragment, TensorCores};
use super::{Access, Kernel, Recorder, dtype_index};
use crate::weights::DType;
use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

/// What the kernel does with each output value (bias included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Epilogue {
    /// `y = value`.
    Store = 0,
    /// `y += value`: the residual connection, without a pass of its own.
    Accumulate = 1,
    /// `y *= silu(value)`: the gate projection applied to the up projection in `y`.
    SiluGate = 2,
    /// `y = relu(value)^2`: Nemotron's MLP activation.
    SquaredRelu = 3,
    /// `y *= gelu_tanh(value)`: Gemma's gate, GELU's tanh approximation.
    GeluTanhGate = 4,
    /// [`Epilogue::SiluGate`] written as f16 (saturated) to the second output instead of
    /// `y`: for a down projection reading f16 x. Wide tensor-core tiles only.
    SiluGateToHalf = 5,
    /// [`Epilogue::GeluTanhGate`] written as f16 to the second output, likewise.
    GeluTanhGateToHalf = 6,
}

impl Epilogue {
    /// The gate written as f16 rather than into `y`; `None` for epilogues without one.
    pub fn to_half(self) -> Option<Epilogue> {
        match self {
            Epilogue::SiluGate => Some(Epilogue::SiluGateToHalf),
            Epilogue::GeluTanhGate => Some(Epilogue::GeluTanhGateToHalf),
            _ => None,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub out_stride: u32,
    pub out_offset: u32,
    pub has_bias: u32,
    pub epilogue: u32,
    pub _pad: u32,
}

impl MatmulParams {
    /// `y (epilogue)= x @ w^T` over a whole `[m, n]` output, without bias.
    pub fn whole(m: usize, n: usize, k: usize, epilogue: Epilogue) -> Self {
        MatmulParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            out_stride: n as u32,
            out_offset: 0,
            has_bias: 0,
            epilogue: epilogue as u32,
            _pad: 0,
        }
    }
}

/// Tile sizes of `matmul_tiled.wgsl` (its `override` constants). A workgroup computes a
/// `tile_m x tile_n` block of the output with `(tile_m / thread_m) * (tile_n / thread_n)`
/// invocations, each a `thread_m x thread_n` register block; K advances `tile_k` at a time
/// through workgroup memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    pub tile_m: u32,
    pub tile_n: u32,
    pub tile_k: u32,
    pub thread_m: u32,
    pub thread_n: u32,
}

impl TileConfig {
    /// 32x32 tiles, K step 16, 4x4 per invocation: 64 invocations, 5 KiB of workgroup
    /// memory. The fastest tiled shape on lavapipe (software adapters).
    pub const SMALL: TileConfig = TileConfig { tile_m: 32, tile_n: 32, tile_k: 16, thread_m: 4, thread_n: 4 };
    /// 64x64 tiles, K step 16, 4x4 per invocation: 256 invocations, 10 KiB. Fits every
    /// adapter with WebGPU's default limits.
    pub const MEDIUM: TileConfig = TileConfig { tile_m: 64, tile_n: 64, tile_k: 16, thread_m: 4, thread_n: 4 };
    /// 128x128 tiles, K step 16, 8x8 per invocation: 256 invocations, 20 KiB. For
    /// discrete GPUs (more reuse per loaded value, 64 accumulators per invocation).
    pub const LARGE: TileConfig = TileConfig { tile_m: 128, tile_n: 128, tile_k: 16, thread_m: 8, thread_n: 8 };

    /// The tile for an adapter: on software adapters (device type Cpu) the 64x64 tile
    /// with 8x8 register blocks (fewest workgroup-memory loads per FMA, which is what
    /// costs there); on hardware [`TileConfig::LARGE`] where the limits allow it, else
    /// [`TileConfig::MEDIUM`].
    pub fn for_adapter(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> TileConfig {
        let preferred = if info.device_type == wgpu::DeviceType::Cpu {
            TileConfig { thread_m: 8, thread_n: 8, ..TileConfig::MEDIUM }
        } else {
            TileConfig::LARGE
        };
        [preferred, TileConfig::MEDIUM, TileConfig::SMALL]
            .into_iter()
            .find(|tile| tile.check(limits).is_ok())
            .unwrap_or(TileConfig { tile_m: 8, tile_n: 8, tile_k: 4, thread_m: 1, thread_n: 1 })
    }

    pub fn invocations(&self) -> u32 {
        (self.tile_m / self.thread_m.max(1)) * (self.tile_n / self.thread_n.max(1))
    }

    /// Bytes of workgroup memory: both staged tiles, rows padded by one vec4.
    pub fn workgroup_bytes(&self) -> u32 {
        (self.tile_m + self.tile_n) * (self.tile_k / 4 + 1) * 16
    }

    /// Whether the shader supports this shape and the device's limits allow it.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<()> {
        let TileConfig { tile_m, tile_n, tile_k, thread_m, thread_n } = *self;
        if !(1..=8).contains(&thread_m) || !(1..=8).contains(&thread_n) {
            bail!("matmul tile {self}: the register block is at most 8x8");
        }
        if !tile_m.is_multiple_of(thread_m)
            || !tile_n.is_multiple_of(thread_n)
            || tile_k == 0
            || !tile_k.is_multiple_of(4)
        {
            bail!("matmul tile {self}: tile_m and tile_n must be multiples of the register block, tile_k of 4");
        }
        let (x, y) = (tile_n / thread_n, tile_m / thread_m);
        if self.invocations() > limits.max_compute_invocations_per_workgroup
            || x > limits.max_compute_workgroup_size_x
            || y > limits.max_compute_workgroup_size_y
        {
            bail!(
                "matmul tile {self}: {x}x{y} invocations exceed the device's workgroup limits ({} in all)",
                limits.max_compute_invocations_per_workgroup
            );
        }
        if self.workgroup_bytes() > limits.max_compute_workgroup_storage_size {
            bail!(
                "matmul tile {self}: {} bytes of workgroup memory, the device allows {}",
                self.workgroup_bytes(),
                limits.max_compute_workgroup_storage_size
            );
        }
        Ok(())
    }

    fn constants(&self) -> [(&'static str, f64); 5] {
        [
            ("TILE_M", self.tile_m as f64),
            ("TILE_N", self.tile_n as f64),
            ("TILE_K", self.tile_k as f64),
            ("THREAD_M", self.thread_m as f64),
            ("THREAD_N", self.thread_n as f64),
        ]
    }
}

impl std::fmt::Display for TileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}/{}x{}", self.tile_m, self.tile_n, self.tile_k, self.thread_m, self.thread_n)
    }
}

/// How a matmul's input `x` is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// f32, which every kernel reads.
    F32,
    /// f16, saturated to f16's finite range: what the staged tensor-core tiles convert x to
    /// anyway, written so by the norm ahead of them (half the bytes to load, nothing to
    /// convert; the same output bits). Only the wide tiles ([`CoopTile::is_wide`]), which stage
    /// x through registers, read it.
    F16,
}

/// Parts of the wide tensor-core tiles' main loop (`matmul_coop_wide.wgsl`'s `PROBE`),
/// each timed alone on the full kernel's grid and K steps by `gpu-info --bench`, each adding
/// one part to the one before: the full kernel's time is the last part's plus the global
/// loads. Where the time goes on a GPU, in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopPart {
    /// The tensor-core products alone, on fragments loaded once: the ceiling.
    Products = 1,
    /// With their fragments loaded from workgroup memory every step.
    FragmentLoads = 2,
    /// With the two workgroup barriers of each K step.
    Barriers = 3,
    /// With each K step stashed into workgroup memory: everything but the global loads.
    Stashes = 4,
}

impl LoopPart {
    pub const ALL: [LoopPart; 4] = [LoopPart::Products, LoopPart::FragmentLoads, LoopPart::Barriers, LoopPart::Stashes];

    pub fn describe(self) -> &'static str {
        match self {
            LoopPart::Products => "loop part: tensor-core products only",
            LoopPart::FragmentLoads => "loop part: + fragment loads from workgroup memory",
            LoopPart::Barriers => "loop part: + barriers",
            LoopPart::Stashes => "loop part: + stashing K steps (all but global loads)",
        }
    }
}

/// Which matmul shader runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulVariant {
    /// `matmul.wgsl`: 4x4 outputs per invocation straight from global memory. Fastest on
    /// software adapters, whose "workgroup memory" is ordinary memory.
    RegisterBlocked,
    /// `matmul_tiled.wgsl`: workgroup tiles staged through workgroup memory, with these
    /// tile sizes. The portable variant for hardware GPUs.
    Tiled(TileConfig),
    /// Tensor cores for f16 weights, with the `tile` shader built for `cores`: needs
    /// `SHADER_F16`, `SUBGROUP` and `EXPERIMENTAL_COOPERATIVE_MATRIX` with that f16 x f16 ->
    /// f32 configuration. Weights of another dtype (a tensor [`f16_weights`] refused) run
    /// the tiled kernel with `fallback`.
    Cooperative { tile: CoopTile, cores: TensorCores, fallback: TileConfig },
}

/// The tensor-core shader and its output tile (sizes below for 16x16 fragments; 8x8
/// fragments halve every side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoopTile {
    /// `matmul_coop.wgsl`: 64x64 tiles, 128 invocations, subgroups of 32 or 64, 27.6 KiB
    /// of workgroup memory.
    Narrow,
    /// `matmul_coop_wide.wgsl`: 128x128 tiles, 8 subgroups of 32 (of 8 with 8x8
    /// fragments), 30 KiB of workgroup memory. Twice the tensor-core products per staged
    /// byte (measured on an H100: 5-6x [`CoopTile::Narrow`]).
    Wide,
    /// [`CoopTile::Wide`] with the next K step's loads in flight during this step's
    /// products (the `PREFETCH` override): more registers, global latency hidden (measured
    /// on an H100: 1.3-1.4x [`CoopTile::Wide`]). The default where the deep tile's
    /// workgroup memory does not fit.
    WidePrefetch,
    /// [`CoopTile::WidePrefetch`] with a K step twice as deep (4 fragments): half the
    /// barriers per product, 46 KiB of workgroup memory (`wide-deep`). The default where it
    /// fits (measured on an H100: 124-146 TFLOP/s, 1.24-1.27x [`CoopTile::WidePrefetch`]).
    WideDeep,
    /// [`CoopTile::WidePrefetch`] with two copies of the staged tiles: the next K step is
    /// stashed into one while this step's products read the other, one barrier per step,
    /// 48 KiB of workgroup memory (`wide-double`). Not yet measured on hardware, so on
    /// request only.
    WideDouble,
    /// `matmul_coop_square.wgsl`: the 128x128 tile computed by 4 subgroups of 64x64 (16
    /// accumulators each): a third less workgroup-memory traffic per product, twice the
    /// accumulator registers (measured on an H100: 0.85-0.88x [`CoopTile::Wide`]; `square`).
    Square,
    /// [`CoopTile::Square`] with `PREFETCH` (`square-prefetch`; measured on an H100:
    /// 0.82-0.85x [`CoopTile::WidePrefetch`]).
    SquarePrefetch,
    /// [`CoopTile::SquarePrefetch`] with a 64-deep K step, as [`CoopTile::WideDeep`] is to
    /// [`CoopTile::WidePrefetch`] (`square-deep`, 42 KiB). Its staging per invocation is
    /// twice the wide tile's, which the cheaper staging (quads of f16) may now afford. Not
    /// yet measured on hardware, so on request only.
    SquareDeep,
    /// `matmul_coop_square.wgsl` on a 128x256 tile: 8 subgroups of 64x64, the warp tile of
    /// CUTLASS's Ampere GEMMs (`big`, 40 KiB). The square's workgroup-memory traffic per
    /// product with the wide tile's 8 subgroups, and a quarter less staging per product than
    /// either. Not yet measured on hardware, so on request only.
    Big,
    /// [`CoopTile::Big`] with `PREFETCH` (`big-prefetch`): the next step's 12 vec4s per
    /// invocation held in registers next to 16 accumulators.
    BigPrefetch,
}

impl CoopTile {
    /// Output rows and columns of one workgroup: 4x4 fragments (narrow), 8x16 (big) or 8x8
    /// (the others).
    pub fn output(self, fragment: Fragment) -> (usize, usize) {
        let side = fragment.side();
        match self {
            CoopTile::Narrow => (4 * side, 4 * side),
            _ => (8 * side, self.column_fragments() as usize * side),
        }
    }

    /// The staging shader's `N_FRAGS`: output columns in fragments.
    fn column_fragments(self) -> u32 {
        if matches!(self, CoopTile::Big | CoopTile::BigPrefetch) { 16 } else { 8 }
    }

    /// K step: two fragments deep, four for [`CoopTile::WideDeep`] and [`CoopTile::SquareDeep`].
    pub fn depth(self, fragment: Fragment) -> usize {
        self.depth_fragments() as usize * fragment.side()
    }

    /// The staging shader's `K_FRAGS`.
    fn depth_fragments(self) -> u32 {
        if matches!(self, CoopTile::WideDeep | CoopTile::SquareDeep) { 4 } else { 2 }
    }

    /// The staging shader's `STAGES`: copies of the staged tiles.
    fn stages(self) -> u32 {
        if self == CoopTile::WideDouble { 2 } else { 1 }
    }

    /// Invocations per workgroup: 128, or 8 subgroups of the adapter's fixed width.
    pub fn invocations(self, cores: TensorCores) -> u32 {
        match self {
            CoopTile::Narrow => 128,
            _ => self.subgroups() * cores.kernel_subgroup().unwrap_or(32),
        }
    }

    /// Subgroups per workgroup of the staged tiles: 8 blocks of 32x64 (wide), 4 squares of
    /// 64x64 (square) or 8 (big). The narrow tile's 128 invocations are 4 subgroups of 32.
    fn subgroups(self) -> u32 {
        match self {
            CoopTile::Wide
            | CoopTile::WidePrefetch
            | CoopTile::WideDeep
            | CoopTile::WideDouble
            | CoopTile::Big
            | CoopTile::BigPrefetch => 8,
            CoopTile::Narrow | CoopTile::Square | CoopTile::SquarePrefetch | CoopTile::SquareDeep => 4,
        }
    }

    /// Whether the next K step's operands load during this step's products (the shaders'
    /// `PREFETCH` override).
    fn prefetch(self) -> bool {
        matches!(
            self,
            CoopTile::WidePrefetch
                | CoopTile::WideDeep
                | CoopTile::WideDouble
                | CoopTile::SquarePrefetch
                | CoopTile::SquareDeep
                | CoopTile::BigPrefetch
        )
    }

    /// Whether `matmul_coop_wide.wgsl` computes this tile, whose main loop can be timed in
    /// parts ([`LoopPart`]).
    pub fn has_loop_parts(self) -> bool {
        matches!(self, CoopTile::Wide | CoopTile::WidePrefetch | CoopTile::WideDeep | CoopTile::WideDouble)
    }

    /// Whether this is a tile of fixed-width subgroups staged through registers (128 rows;
    /// 64 with 8x8 fragments): every tile but [`CoopTile::Narrow`].
    pub fn is_wide(self) -> bool {
        self != CoopTile::Narrow
    }

    /// Whether the tile runs on these tensor cores: the staged shaders stage a whole number
    /// of vec4s of each operand per invocation (4 of x with 8 subgroups, 8 with 4), which holds
    /// for 16x16 fragments with subgroups of 32 (NVIDIA) and 8x8 ones with subgroups of 8
    /// (lavapipe): a subgroup of side^2 / 8.
    pub fn runs_on(self, cores: TensorCores) -> bool {
        let side = cores.fragment.side() as u32;
        !self.is_wide() || cores.kernel_subgroup() == Some(side * side / 8)
    }

    /// Bytes of workgroup memory: the staged f16 tiles (rows padded by 8; one or two
    /// copies) and the f32 output staging (the whole tile, or one fragment per subgroup;
    /// rows padded by 4, not padded with two copies).
    pub fn workgroup_bytes(self, fragment: Fragment) -> u32 {
        let (rows, columns) = self.output(fragment);
        let staged = self.stages() as usize * (rows + columns) * (self.depth(fragment) + 8) * 2;
        let padding = if self.stages() == 2 { 0 } else { 4 };
        let output = match self {
            CoopTile::Narrow => rows * (columns + 4) * 4,
            _ => self.subgroups() as usize * fragment.side() * (fragment.side() + padding) * 4,
        };
        (staged + output) as u32
    }

    /// Whether the tile runs on these tensor cores within these limits.
    pub fn fits(self, cores: TensorCores, limits: &wgpu::Limits) -> bool {
        self.runs_on(cores)
            && self.workgroup_bytes(cores.fragment) <= limits.max_compute_workgroup_storage_size
            && self.invocations(cores) <= limits.max_compute_invocations_per_workgroup
    }

    /// The default tile on this adapter, the fastest measured that fits:
    /// [`CoopTile::WideDeep`] (46 KiB of workgroup memory), else [`CoopTile::WidePrefetch`]
    /// (30 KiB; both are 8 subgroups of a fixed width), else [`CoopTile::Narrow`].
    pub fn for_adapter(cores: TensorCores, limits: &wgpu::Limits) -> CoopTile {
        [CoopTile::WideDeep, CoopTile::WidePrefetch]
            .into_iter()
            .find(|tile| tile.fits(cores, limits))
            .unwrap_or(CoopTile::Narrow)
    }

    /// Every tile that fits, the default first.
    pub fn all_for(cores: TensorCores, limits: &wgpu::Limits) -> Vec<CoopTile> {
        let default = CoopTile::for_adapter(cores, limits);
        let mut tiles = vec![default];
        tiles.extend(CoopTile::ALL.into_iter().filter(|&t| t != default && t.fits(cores, limits)));
        tiles
    }

    pub const ALL: [CoopTile; 10] = [
        CoopTile::Narrow,
        CoopTile::Wide,
        CoopTile::WidePrefetch,
        CoopTile::WideDeep,
        CoopTile::WideDouble,
        CoopTile::Square,
        CoopTile::SquarePrefetch,
        CoopTile::SquareDeep,
        CoopTile::Big,
        CoopTile::BigPrefetch,
    ];

    /// The name `STEERLM_COOP_TILE` takes.
    pub fn key(self) -> &'static str {
        match self {
            CoopTile::Narrow => "narrow",
            CoopTile::Wide => "wide",
            CoopTile::WidePrefetch => "wide-prefetch",
            CoopTile::WideDeep => "wide-deep",
            CoopTile::WideDouble => "wide-double",
            CoopTile::Square => "square",
            CoopTile::SquarePrefetch => "square-prefetch",
            CoopTile::SquareDeep => "square-deep",
            CoopTile::Big => "big",
            CoopTile::BigPrefetch => "big-prefetch",
        }
    }

    /// The shader's name (its profile label) and complete source (before
    /// [`TensorCores::specialize`]) for x stored as `x`; `None` where the tile cannot read it.
    fn source(self, x: Activations) -> Option<(&'static str, String)> {
        let half = x == Activations::F16;
        Some(match self {
            CoopTile::Narrow if half => return None,
            CoopTile::Narrow => ("matmul_coop", with_common(COOPERATIVE)),
            CoopTile::Wide | CoopTile::WidePrefetch | CoopTile::WideDeep | CoopTile::WideDouble => (
                if half { "matmul_coop_x16" } else { "matmul_coop_wide" },
                with_staging(COOPERATIVE_WIDE, self.staging(), x),
            ),
            CoopTile::Square | CoopTile::SquarePrefetch | CoopTile::SquareDeep => (
                if half { "matmul_square_x16" } else { "matmul_coop_square" },
                with_staging(COOPERATIVE_SQUARE, self.staging(), x),
            ),
            CoopTile::Big | CoopTile::BigPrefetch => (
                if half { "matmul_big_x16" } else { "matmul_coop_big" },
                with_staging(COOPERATIVE_SQUARE, self.staging(), x),
            ),
        })
    }

    /// The shader's override constants besides `DTYPE`.
    fn constants(self) -> Vec<(&'static str, f64)> {
        match self {
            CoopTile::Narrow => Vec::new(),
            _ => vec![
                ("PREFETCH", if self.prefetch() { 1.0 } else { 0.0 }),
                ("GROUP_M", tile_group(std::env::var("STEERLM_TILE_GROUP").ok().as_deref()).unwrap_or(8) as f64),
            ],
        }
    }
}

impl MatmulVariant {
    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::RegisterBlocked => "register-blocked",
            MatmulVariant::Tiled(_) => "tiled",
            MatmulVariant::Cooperative { .. } => "cooperative (tensor cores, f16)",
        }
    }

    /// The name with the tile sizes, for `gpu-info` and the bench.
    pub fn describe(self) -> String {
        match self {
            MatmulVariant::RegisterBlocked => "register-blocked 32x32/4x4".to_owned(),
            MatmulVariant::Tiled(tile) => format!("tiled {tile}"),
            MatmulVariant::Cooperative { tile, cores, fallback } => {
                let (m, n) = tile.output(cores.fragment);
                let k = tile.depth(cores.fragment);
                let name = tile.key();
                format!("cooperative {m}x{n}x{k} ({name}) f16 on {cores} (tiled {fallback} for other weight dtypes)")
            }
        }
    }
}

/// One compiled matmul shader: the kernel, the output (rows, columns) one workgroup covers,
/// and whether it has the second, f16 output (the staged tensor-core tiles: binding 5).
struct Pipeline {
    kernel: Kernel,
    tile: (usize, usize),
    half_output: bool,
}

/// One pipeline per weight dtype of the chosen variant.
pub struct Matmul {
    pub variant: MatmulVariant,
    per_dtype: [Pipeline; 3],
    /// The tensor-core kernel reading f16 x, where asked for ([`Matmul::add_f16_input`]).
    f16_x: Option<Pipeline>,
    /// Bound as the f16 output of kernels that have one when a dispatch writes none.
    no_half_output: wgpu::Buffer,
}

const BUFFERS: [Access; 4] = [Access::Read, Access::Read, Access::Read, Access::ReadWrite];
/// The staged tensor-core tiles' bindings: [`BUFFERS`] and the f16 output.
const STAGED_BUFFERS: [Access; 5] = [Access::Read, Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite];

const REGISTER_BLOCKED: &str = include_str!("../../../../shaders/matmul.wgsl");
const TILED: &str = include_str!("../../../../shaders/matmul_tiled.wgsl");
const COOPERATIVE: &str = include_str!("../../../../shaders/matmul_coop.wgsl");
const COOPERATIVE_WIDE: &str = include_str!("../../../../shaders/matmul_coop_wide.wgsl");
const COOPERATIVE_SQUARE: &str = include_str!("../../../../shaders/matmul_coop_square.wgsl");
/// Operand staging and accumulator output shared by the wide and square shaders.
const STAGING: &str = include_str!("../../../../shaders/matmul_coop_staging.wgsl");
/// Parameters, bindings, epilogue and weight load shared by the three.
const COMMON: &str = include_str!("../../../../shaders/matmul_common.wgsl");

/// A matmul shader with the common part inserted.
fn with_common(body: &str) -> String {
    super::with_prelude(COMMON, body)
}

/// The shape of a staged tensor-core tile, as the staging part's constants say it: its K
/// step in fragments (`K_FRAGS`), copies of its staged tiles (`STAGES`) and output columns
/// in fragments (`N_FRAGS`).
#[derive(Clone, Copy, Debug)]
struct Staging {
    depth_fragments: u32,
    stages: u32,
    column_fragments: u32,
}

impl Staging {
    /// The 128x128 tile, K step 32, one copy.
    const PLAIN: Staging = Staging { depth_fragments: 2, stages: 1, column_fragments: 8 };
}

impl CoopTile {
    fn staging(self) -> Staging {
        Staging {
            depth_fragments: self.depth_fragments(),
            stages: self.stages(),
            column_fragments: self.column_fragments(),
        }
    }
}

/// A staged tensor-core shader with the common part and the staging part inserted, of the
/// shape `staging` gives, and x stored as `x` says (the staging part's `K_FRAGS`, `STAGES`,
/// `N_FRAGS` and `XVec`, each declared exactly once; the common part's binding of x becomes
/// an `array<XVec>`).
fn with_staging(body: &str, staging: Staging, x: Activations) -> String {
    const DEPTH: &str = "const K_FRAGS: u32 = 2u;";
    const STAGES: &str = "const STAGES: u32 = 1u;";
    const COLUMNS: &str = "const N_FRAGS: u32 = 8u;";
    const X_VEC: &str = "alias XVec = vec4<f32>;";
    const X_BINDING: &str = "var<storage, read> x: array<vec4<f32>>;";
    for line in [DEPTH, STAGES, COLUMNS, X_VEC] {
        debug_assert_eq!(STAGING.matches(line).count(), 1, "{line}");
    }
    debug_assert_eq!(COMMON.matches(X_BINDING).count(), 1);
    let x_vec = match x {
        Activations::F32 => X_VEC,
        Activations::F16 => "alias XVec = vec4<f16>;",
    };
    let Staging { depth_fragments, stages, column_fragments } = staging;
    let source = STAGING
        .replace(DEPTH, &format!("const K_FRAGS: u32 = {depth_fragments}u;"))
        .replace(STAGES, &format!("const STAGES: u32 = {stages}u;"))
        .replace(COLUMNS, &format!("const N_FRAGS: u32 = {column_fragments}u;"))
        .replace(X_VEC, x_vec);
    let common = COMMON.replace(X_BINDING, "var<storage, read> x: array<XVec>;");
    super::with_prelude(&common, &super::with_prelude(&source, body))
}

/// The complete WGSL source of each matmul shader, for validation without a device.
pub fn sources() -> [(&'static str, String); 9] {
    let deep = Staging { depth_fragments: 4, ..Staging::PLAIN };
    [
        ("matmul.wgsl", with_common(REGISTER_BLOCKED)),
        ("matmul_tiled.wgsl", with_common(TILED)),
        ("matmul_coop.wgsl", with_common(COOPERATIVE)),
        ("matmul_coop_wide.wgsl", with_staging(COOPERATIVE_WIDE, Staging::PLAIN, Activations::F32)),
        ("matmul_coop_wide.wgsl (deep)", with_staging(COOPERATIVE_WIDE, deep, Activations::F32)),
        (
            "matmul_coop_wide.wgsl (double)",
            with_staging(COOPERATIVE_WIDE, Staging { stages: 2, ..Staging::PLAIN }, Activations::F32),
        ),
        ("matmul_coop_wide.wgsl (deep, f16 x)", with_staging(COOPERATIVE_WIDE, deep, Activations::F16)),
        ("matmul_coop_square.wgsl", with_staging(COOPERATIVE_SQUARE, Staging::PLAIN, Activations::F32)),
        (
            "matmul_coop_square.wgsl (big)",
            with_staging(COOPERATIVE_SQUARE, Staging { column_fragments: 16, ..Staging::PLAIN }, Activations::F32),
        ),
    ]
}

impl Matmul {
    pub fn new(device: &wgpu::Device, variant: MatmulVariant) -> Result<Self> {
        Self::build(device, variant, None)
    }

    /// [`Matmul::new`] with its tensor-core kernel reduced to one [`LoopPart`] of its main
    /// loop, for timing (`gpu-info --bench`); its results are not a matmul's. For the tiles
    /// of the wide shader only.
    pub fn loop_part(device: &wgpu::Device, variant: MatmulVariant, part: LoopPart) -> Result<Self> {
        match variant {
            MatmulVariant::Cooperative { tile, .. } if tile.has_loop_parts() => {
                Self::build(device, variant, Some(part))
            }
            _ => bail!("loop parts are timed on the wide tensor-core tiles only, not {}", variant.describe()),
        }
    }

    fn build(device: &wgpu::Device, variant: MatmulVariant, part: Option<LoopPart>) -> Result<Self> {
        let size = std::mem::size_of::<MatmulParams>() as u64;
        let register_blocked = |dtype: f64| -> Result<Pipeline> {
            let source = with_common(REGISTER_BLOCKED);
            let kernel = Kernel::new(device, "matmul", &source, &[("DTYPE", dtype)], size, &BUFFERS)?;
            Ok(Pipeline { kernel, tile: (32, 32), half_output: false })
        };
        let tiled = |tile: TileConfig, dtype: f64| -> Result<Pipeline> {
            tile.check(&device.limits())?;
            let mut constants = vec![("DTYPE", dtype)];
            constants.extend(tile.constants());
            let kernel = Kernel::new(device, "matmul_tiled", &with_common(TILED), &constants, size, &BUFFERS)?;
            Ok(Pipeline { kernel, tile: (tile.tile_m as usize, tile.tile_n as usize), half_output: false })
        };
        let per_dtype = match variant {
            MatmulVariant::RegisterBlocked => [register_blocked(0.0)?, register_blocked(1.0)?, register_blocked(2.0)?],
            MatmulVariant::Tiled(tile) => [tiled(tile, 0.0)?, tiled(tile, 1.0)?, tiled(tile, 2.0)?],
            MatmulVariant::Cooperative { tile, cores, fallback } => {
                let fragment = cores.fragment;
                let needed = wgpu::Features::SHADER_F16
                    | wgpu::Features::SUBGROUP
                    | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
                if !device.features().contains(needed) {
                    bail!("the cooperative matmul needs the device features {:?}", needed - device.features());
                }
                let limits = device.limits();
                if !tile.runs_on(cores) {
                    bail!("the cooperative matmul {tile:?} does not run on {cores}");
                }
                if tile.workgroup_bytes(fragment) > limits.max_compute_workgroup_storage_size
                    || limits.max_compute_invocations_per_workgroup < tile.invocations(cores)
                {
                    bail!(
                        "the cooperative matmul {tile:?} needs {} bytes of workgroup memory and {} invocations; \
                         the device allows {} and {}",
                        tile.workgroup_bytes(fragment),
                        tile.invocations(cores),
                        limits.max_compute_workgroup_storage_size,
                        limits.max_compute_invocations_per_workgroup
                    );
                }
                let coop = coop_kernel(device, tile, cores, Activations::F32, part)?;
                [tiled(fallback, 0.0)?, tiled(fallback, 1.0)?, coop]
            }
        };
        let no_half_output = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("no f16 output"),
            size: 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Matmul { variant, per_dtype, f16_x: None, no_half_output })
    }

    /// Makes this matmul able to read f16 x ([`Activations::F16`]) with f16 weights: for the
    /// wide tensor-core tiles only, and only if the kernel passes [`Matmul::self_check`];
    /// an error otherwise, and the matmul as it was.
    pub fn add_f16_input(&mut self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<()> {
        match self.variant {
            MatmulVariant::Cooperative { tile, cores, .. } if tile.is_wide() => {
                self.f16_x = Some(coop_kernel(device, tile, cores, Activations::F16, None)?);
                match self.self_check(device, queue) {
                    Ok(worst) if worst <= SELF_CHECK_TOLERANCE => Ok(()),
                    checked => {
                        self.f16_x = None;
                        bail!("the f16-x kernel {}", self_check_failure(checked))
                    }
                }
            }
            variant => bail!("f16 activations need a wide tensor-core tile, not {}", variant.describe()),
        }
    }

    /// Runs the tensor-core kernels (f16 weights; f32 x, and f16 x where added) once on a small
    /// problem and returns the largest error against an f64 reference of the same f16
    /// inputs, relative to `1 + |y|`. The problem has whole output tiles and ragged edges,
    /// a K tail, a plain store (the direct accumulator store) and an accumulating one (the
    /// staged epilogue). Cooperative matrices are experimental in wgpu and drivers; the
    /// model checks this at load and falls back to the f32 kernel when it is over
    /// [`SELF_CHECK_TOLERANCE`]. `Ok(0.0)` for other variants. A wgpu error while it runs
    /// is its error (it fails the check), not one kept for the load to report.
    pub fn self_check(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<f64> {
        let check = || self.run_self_check(device, queue);
        crate::gpu::errors::capture(device, || "running its check problem".to_owned(), check)?
    }

    fn run_self_check(&self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<f64> {
        use super::{BindCache, read_buffer};
        use wgpu::util::DeviceExt;
        if !matches!(self.variant, MatmulVariant::Cooperative { .. }) {
            return Ok(0.0);
        }
        // Two whole 128x128 tiles and an edge each way, rows 16-byte aligned (so whole tiles
        // of the plain store take the direct path), and K with a tail past 64.
        let (m, n, k) = (300, 292, 100);
        let values = |count: usize, seed: usize| -> Vec<f32> {
            (0..count).map(|i| (((i * 7919 + seed * 104_729) % 211) as f32 - 105.0) / 105.0).collect()
        };
        let to_f16 = |v: &[f32]| f16_weights("self-check", DType::F32, bytemuck::cast_slice(v));
        let rounded = |v: &[f32]| -> Vec<f64> { v.iter().map(|&v| half::f16::from_f32(v).to_f64()).collect() };
        let (x, w, y0) = (values(m * k, 1), values(n * k, 2), values(m * n, 3));
        let (xr, wr) = (rounded(&x), rounded(&w));
        // The reference products, once for every kernel and epilogue checked.
        let dots: Vec<f64> = (0..m * n).map(|e| (0..k).map(|i| xr[e / n * k + i] * wr[e % n * k + i]).sum()).collect();
        let storage = |label: &str, bytes: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            })
        };
        let w_buffer = storage("self-check w", &to_f16(&w)?);
        let bias = storage("self-check bias", &[0u8; 4]);
        let mut inputs = vec![(Activations::F32, storage("self-check x", bytemuck::cast_slice(&x)))];
        if self.f16_x.is_some() {
            inputs.push((Activations::F16, storage("self-check x f16", &to_f16(&x)?)));
        }
        let mut worst = 0f64;
        for (x_stored, x_buffer) in &inputs {
            for epilogue in [Epilogue::Store, Epilogue::Accumulate] {
                let y = storage("self-check y", bytemuck::cast_slice(&y0));
                let readback = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("self-check readback"),
                    size: (m * n * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let params = MatmulParams::whole(m, n, k, epilogue);
                let mut rec = Recorder::new(device);
                self.record(&mut rec, params, DType::F16, *x_stored, x_buffer, &w_buffer, &bias, &y, None);
                let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                rec.encode(device, queue, &mut BindCache::default(), &mut encoder, false)?;
                encoder.copy_buffer_to_buffer(&y, 0, &readback, 0, readback.size());
                queue.submit([encoder.finish()]);
                let got: Vec<f32> = bytemuck::cast_slice(&read_buffer(device, &readback)?).to_vec();
                for (e, &dot) in dots.iter().enumerate() {
                    let want = if epilogue == Epilogue::Accumulate { y0[e] as f64 + dot } else { dot };
                    let error = (got[e] as f64 - want).abs() / (1.0 + want.abs());
                    // NaN (a tile never written, a garbage read) counts as failing.
                    worst = if error.is_nan() { f64::INFINITY } else { worst.max(error) };
                }
            }
        }
        Ok(worst)
    }

    /// Records `y[.., out_offset..out_offset + n] (epilogue)= x @ w^T (+ bias)`, with x stored
    /// as `x_stored` says; a `*ToHalf` epilogue ([`Epilogue::to_half`]) writes `y_half`
    /// instead of `y`. f16 x and the f16 output go only to f16 weights of a matmul made
    /// [`Matmul::add_f16_input`] (the caller's to ensure; checked in debug builds).
    #[allow(clippy::too_many_arguments)]
    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: MatmulParams,
        dtype: DType,
        x_stored: Activations,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        y: &wgpu::Buffer,
        y_half: Option<&wgpu::Buffer>,
    ) {
        let pipeline = match (x_stored, &self.f16_x) {
            (Activations::F16, Some(f16_x)) if dtype == DType::F16 => f16_x,
            (Activations::F16, _) => {
                debug_assert!(false, "f16 x for {dtype:?} weights on {}", self.variant.describe());
                &self.per_dtype[dtype_index(dtype)]
            }
            (Activations::F32, _) => &self.per_dtype[dtype_index(dtype)],
        };
        let writes_half = params.epilogue == Epilogue::SiluGateToHalf as u32
            || params.epilogue == Epilogue::GeluTanhGateToHalf as u32;
        debug_assert!(!writes_half || (pipeline.half_output && y_half.is_some()), "an f16 output nowhere");
        let tile = pipeline.tile;
        let groups = [(params.n as usize).div_ceil(tile.1) as u32, (params.m as usize).div_ceil(tile.0) as u32, 1];
        let flops = 2.0 * params.m as f64 * params.n as f64 * params.k as f64;
        if pipeline.half_output {
            let y_half = y_half.unwrap_or(&self.no_half_output);
            rec.dispatch(&pipeline.kernel, &params, &[x, w, bias, y, y_half], groups, flops);
        } else {
            rec.dispatch(&pipeline.kernel, &params, &[x, w, bias, y], groups, flops);
        }
    }
}

/// Rows of output tiles the staged tensor-core tiles walk through together (`GROUP_M`), from a
/// `STEERLM_TILE_GROUP` value: unset or empty is the default 8, 1 is plain row order, at
/// most 64; anything else is an error saying so (shown in the plan's reason, and then 8).
pub fn tile_group(value: Option<&str>) -> Result<u32, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(8),
        Some(text) => match text.parse::<u32>() {
            Ok(rows @ 1..=64) => Ok(rows),
            _ => Err(format!("STEERLM_TILE_GROUP={text:?} is not a whole number from 1 to 64")),
        },
    }
}

/// The largest error [`Matmul::self_check`] accepts, relative to `1 + |y|`: far above what
/// f32 sums of f16 products make on its small problem (about 1e-6), far below what a wrong
/// tile, layout or store makes (order 1).
pub const SELF_CHECK_TOLERANCE: f64 = 1e-3;

/// Why a [`Matmul::self_check`] result is a failure: an error, or the error it measured.
pub fn self_check_failure(checked: Result<f64>) -> String {
    match checked {
        Ok(worst) => format!("gave wrong results on a check problem (error {worst:.2e} > {SELF_CHECK_TOLERANCE:e})"),
        Err(why) => format!("failed its check problem ({why:#})"),
    }
}

/// The tensor-core kernel of `tile` for x stored as `x`.
fn coop_kernel(
    device: &wgpu::Device,
    tile: CoopTile,
    cores: TensorCores,
    x: Activations,
    part: Option<LoopPart>,
) -> Result<Pipeline> {
    let Some((label, source)) = tile.source(x) else {
        bail!("the {} tile does not read {x:?} x", tile.key());
    };
    let source = cores.specialize(label, &source)?;
    let mut constants = vec![("DTYPE", 2.0)];
    constants.extend(tile.constants());
    if let Some(part) = part {
        constants.push(("PROBE", part as u32 as f64));
    }
    let size = std::mem::size_of::<MatmulParams>() as u64;
    let buffers: &[Access] = if tile.is_wide() { &STAGED_BUFFERS } else { &BUFFERS };
    let kernel = Kernel::new(device, label, &source, &constants, size, buffers)?;
    Ok(Pipeline { kernel, tile: tile.output(cores.fragment), half_output: tile.is_wide() })
}

/// A weight in `dtype` (little-endian `bytes`) as f16 bytes, for the tensor-core path.
/// f16 input is returned as is. Any value outside f16's finite range (|x| > 65504, or not
/// finite) is an error naming the tensor; other values round to the nearest f16.
pub fn f16_weights(name: &str, dtype: DType, bytes: &[u8]) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let widen: fn(&[u8]) -> f32 = match dtype {
        DType::F16 => return Ok(bytes.to_vec()),
        DType::BF16 => |b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        DType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    };
    let width = dtype.size();
    if !bytes.len().is_multiple_of(width) {
        bail!("tensor {name}: {} bytes is not a whole number of {dtype:?} values", bytes.len());
    }
    let parts: Vec<std::result::Result<Vec<u8>, (usize, f32)>> = bytes
        .par_chunks(CHUNK * width)
        .enumerate()
        .map(|(chunk, part)| {
            let mut out = Vec::with_capacity(part.len() / width * 2);
            for (i, value) in part.chunks_exact(width).map(widen).enumerate() {
                if !value.is_finite() || value.abs() > 65504.0 {
                    return Err((chunk * CHUNK + i, value));
                }
                out.extend_from_slice(&half::f16::from_f32(value).to_le_bytes());
            }
            Ok(out)
        })
        .collect();
    let mut out = Vec::with_capacity(bytes.len() / width * 2);
    for part in parts {
        match part {
            Ok(part) => out.extend_from_slice(&part),
            Err((index, value)) => bail!(
                "tensor {name}: element {index} is {value}, outside f16's finite range (|x| <= 65504); \
                 it cannot run on the tensor-core path"
            ),
        }
    }
    Ok(out)
}

/// Times one matmul variant alone: `[m, k] @ [n, k]^T` with f32 weights (f16 for
/// [`MatmulVariant::Cooperative`]) and x stored as `x_stored` says, `iterations` dispatches
/// in one submission after a one-dispatch warm-up. Returns seconds per dispatch and the
/// adapter's name.
pub fn time_variant(
    variant: MatmulVariant,
    x_stored: Activations,
    shape: (usize, usize, usize),
    iterations: usize,
) -> Result<(f64, String)> {
    use crate::gpu::{AdapterChoice, open_device};
    let gpu = open_device(AdapterChoice::Any)?.expect("Any returns an adapter or an error");
    let mut matmul = Matmul::new(&gpu.device, variant)?;
    if x_stored == Activations::F16 {
        matmul.add_f16_input(&gpu.device, &gpu.queue)?;
    }
    Ok((time_dispatches(&gpu, &matmul, x_stored, shape, iterations)?, gpu.info.name.clone()))
}

/// Times one [`LoopPart`] of a wide tensor-core tile as [`time_variant`] times the whole
/// kernel (f32 x): seconds per dispatch.
pub fn time_loop_part(
    variant: MatmulVariant,
    part: LoopPart,
    shape: (usize, usize, usize),
    iterations: usize,
) -> Result<f64> {
    use crate::gpu::{AdapterChoice, open_device};
    let gpu = open_device(AdapterChoice::Any)?.expect("Any returns an adapter or an error");
    let matmul = Matmul::loop_part(&gpu.device, variant, part)?;
    time_dispatches(&gpu, &matmul, Activations::F32, shape, iterations)
}

/// Seconds per dispatch of `matmul` at `(m, n, k)`, over `iterations` dispatches in one
/// submission after a one-row warm-up.
fn time_dispatches(
    gpu: &crate::gpu::Gpu,
    matmul: &Matmul,
    x_stored: Activations,
    (m, n, k): (usize, usize, usize),
    iterations: usize,
) -> Result<f64> {
    use super::{BindCache, read_buffer};
    use wgpu::util::DeviceExt;
    let device = &gpu.device;
    let values = |count: usize| -> Vec<f32> { (0..count).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect() };
    let buffer = |label: &str, bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let (dtype, weight) = match matmul.variant {
        MatmulVariant::Cooperative { .. } => {
            (DType::F16, f16_weights("timing", DType::F32, bytemuck::cast_slice(&values(n * k)))?)
        }
        _ => (DType::F32, bytemuck::cast_slice(&values(n * k)).to_vec()),
    };
    let x = match x_stored {
        Activations::F32 => buffer("x", bytemuck::cast_slice(&values(m * k))),
        Activations::F16 => buffer("x", &f16_weights("timing x", DType::F32, bytemuck::cast_slice(&values(m * k)))?),
    };
    let w = buffer("w", &weight);
    let bias = buffer("bias", bytemuck::cast_slice(&values(n)));
    let y = buffer("y", bytemuck::cast_slice(&values(m * n)));
    let done = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("done"),
        size: 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let params = MatmulParams::whole(m, n, k, Epilogue::Store);
    let mut cache = BindCache::default();
    let mut run = |count: usize, params: MatmulParams| -> Result<f64> {
        let mut rec = Recorder::new(device);
        for _ in 0..count {
            matmul.record(&mut rec, params, dtype, x_stored, &x, &w, &bias, &y, None);
        }
        let started = std::time::Instant::now();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        rec.encode(device, &gpu.queue, &mut cache, &mut encoder, false)?;
        encoder.copy_buffer_to_buffer(&y, 0, &done, 0, 4);
        gpu.queue.submit([encoder.finish()]);
        read_buffer(device, &done)?;
        Ok(started.elapsed().as_secs_f64())
    };
    // Warm-up: first-use costs, on one row so big shapes do not pay a whole extra dispatch.
    run(1, MatmulParams { m: 1, ..params })?;
    Ok(run(iterations, params)? / iterations as f64)
}

#[cfg(test)]
#[path = "matmul_tests.rs"]
mod matmul_tests;
