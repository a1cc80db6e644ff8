//! Every matmul variant against a CPU reference (f64 loops) on small odd shapes: all three
//! weight dtypes, all four epilogues, bias on and off, and a weight split in two row
//! ranges (out_offset/out_stride). The tensor-core kernel is validated with naga here and
//! run where the adapter offers it; elsewhere its test prints that it was skipped.

use super::*;
use crate::gpu::kernels::{BindCache, read_buffer, validate_wgsl as validate};
use crate::gpu::{AdapterChoice, Gpu, open_device};
use wgpu::naga;
use wgpu::util::DeviceExt;

/// (m, n, k): m and n not multiples of any tile, k a multiple of 4 but (136) not of 16/32;
/// the last spans two 128-wide tiles each way.
// The last: more rows of tiles than the staged tiles walk through together (GROUP_M, 8; 17
// rows of 64 on lavapipe), so a full group and a short one.
const SHAPES: [(usize, usize, usize); 5] = [(37, 52, 96), (1, 9, 64), (130, 70, 136), (150, 260, 64), (1100, 70, 32)];
const EPILOGUES: [Epilogue; 5] =
    [Epilogue::Store, Epilogue::Accumulate, Epilogue::SiluGate, Epilogue::SquaredRelu, Epilogue::GeluTanhGate];
const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn gpu() -> Gpu {
    open_device(AdapterChoice::Any).expect("opening a wgpu device").expect("Any returns an adapter")
}

/// Deterministic values in [-1, 1).
fn values(seed: u64, count: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `values` stored in `dtype`, and the values the kernel sees after widening.
fn encode(dtype: DType, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        DType::F32 => (bytemuck::cast_slice(values).to_vec(), values.to_vec()),
        DType::BF16 => {
            let h: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
        DType::F16 => {
            let h: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
        }
    }
}

#[derive(Clone)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    dtype: DType,
    epilogue: Epilogue,
    bias: bool,
    /// Rows of the weight in its first part (the rest is a second buffer at out_offset).
    split: Option<usize>,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{}x{} {:?} {:?} bias {} split {:?}",
            self.m, self.n, self.k, self.dtype, self.epilogue, self.bias, self.split
        )
    }
}

/// Every shape x dtype x epilogue, bias and splitting alternating so each dtype and
/// epilogue sees both.
fn cases(dtypes: &[DType]) -> Vec<Case> {
    let mut cases = Vec::new();
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        for (d, &dtype) in dtypes.iter().enumerate() {
            for (e, &epilogue) in EPILOGUES.iter().enumerate() {
                let bias = (s + e) % 2 == 0;
                let split = ((d + e) % 2 == 1).then_some(n / 2 + 1);
                cases.push(Case { m, n, k, dtype, epilogue, bias, split });
            }
        }
    }
    cases
}

/// The reference output of `case`: `x` and `w` as the kernel sees them, `y0` what `y`
/// held before.
fn reference(case: &Case, x: &[f32], w: &[f32], bias: &[f32], y0: &[f32]) -> Vec<f64> {
    let mut y = Vec::with_capacity(case.m * case.n);
    for r in 0..case.m {
        for c in 0..case.n {
            let mut value: f64 = (0..case.k).map(|i| x[r * case.k + i] as f64 * w[c * case.k + i] as f64).sum();
            if case.bias {
                value += bias[c] as f64;
            }
            let old = y0[r * case.n + c] as f64;
            y.push(match case.epilogue {
                Epilogue::Store => value,
                Epilogue::Accumulate => old + value,
                Epilogue::SiluGate | Epilogue::SiluGateToHalf => old * value / (1.0 + (-value).exp()),
                Epilogue::SquaredRelu => value.max(0.0).powi(2),
                Epilogue::GeluTanhGate | Epilogue::GeluTanhGateToHalf => {
                    let inner = (2.0 / std::f64::consts::PI).sqrt() * (value + 0.044715 * value.powi(3));
                    old * 0.5 * value * (1.0 + inner.tanh())
                }
            });
        }
    }
    y
}

struct Prepared {
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    y0: Vec<f32>,
    buffers: Vec<wgpu::Buffer>,
    /// The f16 output of a `*ToHalf` epilogue.
    half: Option<wgpu::Buffer>,
    readback: wgpu::Buffer,
}

/// Whether the epilogue writes the matmul's second, f16 output.
fn writes_half(epilogue: Epilogue) -> bool {
    matches!(epilogue, Epilogue::SiluGateToHalf | Epilogue::GeluTanhGateToHalf)
}

/// Runs every case through `matmul` in one submission, x stored as `x_stored` says;
/// returns, per case, the kernel's output (its f16 output, widened, for a `*ToHalf`
/// epilogue) and the inputs the reference needs.
fn run(
    gpu: &Gpu,
    matmul: &Matmul,
    cases: &[Case],
    x_stored: Activations,
    weight_dtype: impl Fn(&Case) -> DType,
) -> Vec<(Prepared, Vec<f32>)> {
    let device = &gpu.device;
    let storage = |label: &str, bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let mut prepared = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let seed = i as u64 * 4;
        let x = values(seed, case.m * case.k);
        let w32 = values(seed + 1, case.n * case.k);
        let bias = values(seed + 2, case.n);
        let y0 = values(seed + 3, case.m * case.n);
        let dtype = weight_dtype(case);
        let (w_bytes, w) = if dtype == case.dtype {
            encode(dtype, &w32)
        } else {
            // The tensor-core path: the stored dtype converted to f16 at load.
            let (stored, _) = encode(case.dtype, &w32);
            let converted = f16_weights("test weight", case.dtype, &stored).unwrap();
            let seen = converted.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            (converted, seen)
        };
        let first = case.split.unwrap_or(case.n);
        let row_bytes = case.k * dtype.size();
        let mut buffers = vec![
            match x_stored {
                Activations::F32 => storage("x", bytemuck::cast_slice(&x)),
                // What the norm writes: saturated to f16's range, rounded to nearest.
                Activations::F16 => storage("x", &f16_weights("test x", DType::F32, bytemuck::cast_slice(&x)).unwrap()),
            },
            storage("bias", bytemuck::cast_slice(&bias)),
            storage("y", bytemuck::cast_slice(&y0)),
            storage("w part 0", &w_bytes[..first * row_bytes]),
        ];
        if first < case.n {
            buffers.push(storage("w part 1", &w_bytes[first * row_bytes..]));
        }
        let half_bytes = (case.m * case.n * 2).next_multiple_of(4);
        let half = writes_half(case.epilogue).then(|| storage("y f16", &vec![0u8; half_bytes]));
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: if half.is_some() { half_bytes } else { case.m * case.n * 4 } as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        prepared.push(Prepared { x, w, bias, y0, buffers, half, readback });
    }
    let mut rec = Recorder::new(device);
    for (case, p) in cases.iter().zip(&prepared) {
        let first = case.split.unwrap_or(case.n);
        let parts = [(0, first, &p.buffers[3]), (first, case.n - first, p.buffers.get(4).unwrap_or(&p.buffers[3]))];
        for (offset, rows, w) in parts {
            if rows == 0 {
                continue;
            }
            let params = MatmulParams {
                m: case.m as u32,
                n: rows as u32,
                k: case.k as u32,
                out_stride: case.n as u32,
                out_offset: offset as u32,
                has_bias: case.bias as u32,
                epilogue: case.epilogue as u32,
                _pad: 0,
            };
            let dtype = weight_dtype(case);
            let (x, bias, y) = (&p.buffers[0], &p.buffers[1], &p.buffers[2]);
            matmul.record(&mut rec, params, dtype, x_stored, x, w, bias, y, p.half.as_ref());
        }
    }
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    rec.encode(device, &gpu.queue, &mut BindCache::default(), &mut encoder, false).unwrap();
    for p in &prepared {
        encoder.copy_buffer_to_buffer(p.half.as_ref().unwrap_or(&p.buffers[2]), 0, &p.readback, 0, p.readback.size());
    }
    gpu.queue.submit([encoder.finish()]);
    prepared
        .into_iter()
        .zip(cases)
        .map(|(p, case)| {
            let bytes = read_buffer(device, &p.readback).unwrap();
            let got = match p.half {
                Some(_) => bytes[..case.m * case.n * 2]
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                None => bytemuck::cast_slice(&bytes).to_vec(),
            };
            (p, got)
        })
        .collect()
}

/// Largest `|got - want| / (1 + |want|)` over one case.
fn max_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs())).fold(0.0, f64::max)
}

/// Checks `variant` on every case in its weights' stored dtype, to `1e-5 * (1 + |y|)`.
fn check_f32_path(variant: MatmulVariant) {
    let gpu = gpu();
    let matmul = Matmul::new(&gpu.device, variant).unwrap();
    let cases = cases(&DTYPES);
    let results = run(&gpu, &matmul, &cases, Activations::F32, |case| case.dtype);
    let mut worst = 0f64;
    for (case, (p, got)) in cases.iter().zip(&results) {
        let want = reference(case, &p.x, &p.w, &p.bias, &p.y0);
        let error = max_error(got, &want);
        assert!(error <= 1e-5, "{} on {}: {case}: error {error:e}", variant.describe(), gpu.info.name);
        worst = worst.max(error);
    }
    eprintln!("{} on {}: {} cases, worst error {worst:.1e}", variant.describe(), gpu.info.name, cases.len());
}

#[test]
fn register_blocked_matches_cpu() {
    check_f32_path(MatmulVariant::RegisterBlocked);
}

#[test]
fn tiled_matches_cpu_for_every_preset() {
    for tile in [TileConfig::SMALL, TileConfig::MEDIUM, TileConfig::LARGE] {
        check_f32_path(MatmulVariant::Tiled(tile));
    }
}

#[test]
fn tiled_matches_cpu_for_uneven_shapes() {
    // Rectangular tiles, rectangular register blocks, a K step of 4 and of 32.
    for tile in [
        TileConfig { tile_m: 16, tile_n: 64, tile_k: 4, thread_m: 2, thread_n: 8 },
        TileConfig { tile_m: 64, tile_n: 32, tile_k: 32, thread_m: 8, thread_n: 4 },
        TileConfig { tile_m: 24, tile_n: 8, tile_k: 8, thread_m: 3, thread_n: 1 },
    ] {
        check_f32_path(MatmulVariant::Tiled(tile));
    }
}

#[test]
fn tile_config_check_rejects_what_the_shader_cannot_do() {
    let limits = wgpu::Limits::default();
    for tile in [TileConfig::SMALL, TileConfig::MEDIUM] {
        tile.check(&limits).unwrap();
    }
    let bad = [
        TileConfig { thread_m: 16, tile_m: 128, ..TileConfig::MEDIUM },
        TileConfig { tile_m: 66, ..TileConfig::MEDIUM },
        TileConfig { tile_k: 6, ..TileConfig::MEDIUM },
        TileConfig { tile_m: 128, tile_n: 128, ..TileConfig::MEDIUM },
    ];
    for tile in bad {
        assert!(tile.check(&limits).is_err(), "{tile} passed");
    }
    // WebGPU's default 16 KiB of workgroup memory is too little for the large tile.
    assert!(TileConfig::LARGE.check(&limits).is_err());
    let mut info = gpu().info;
    info.device_type = wgpu::DeviceType::DiscreteGpu;
    assert_eq!(TileConfig::for_adapter(&info, &limits), TileConfig::MEDIUM);
    let big = wgpu::Limits { max_compute_workgroup_storage_size: 48 << 10, ..limits.clone() };
    assert_eq!(TileConfig::for_adapter(&info, &big), TileConfig::LARGE);
    info.device_type = wgpu::DeviceType::Cpu;
    assert_eq!(TileConfig::for_adapter(&info, &big), TileConfig { thread_m: 8, thread_n: 8, ..TileConfig::MEDIUM });
}

#[test]
fn tiled_shader_validates_with_naga_for_every_preset() {
    for tile in [TileConfig::SMALL, TileConfig::MEDIUM, TileConfig::LARGE] {
        for dtype in [0.0, 1.0, 2.0] {
            let mut constants = vec![("DTYPE", dtype)];
            constants.extend(tile.constants());
            validate(
                "matmul_tiled.wgsl",
                &with_common(TILED),
                naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
                &constants,
            );
        }
    }
}

#[test]
fn cooperative_shader_validates_with_naga() {
    use naga::valid::Capabilities as C;
    // What wgpu grants with SHADER_F16, SUBGROUP and EXPERIMENTAL_COOPERATIVE_MATRIX
    // (SHADER_FLOAT16_IN_FLOAT32, for unpack2x16float, every Vulkan device has).
    let granted = C::COOPERATIVE_MATRIX | C::SHADER_FLOAT16 | C::SUBGROUP | C::SHADER_FLOAT16_IN_FLOAT32;
    let lavapipe = TensorCores { fragment: Fragment::Eight, fixed_subgroup: Some(8) };
    for cores in [TensorCores::NVIDIA, lavapipe] {
        let mut spirv = Vec::new();
        for tile in CoopTile::ALL {
            let (name, source) = tile.source(Activations::F32).unwrap();
            let source = cores.specialize(name, &source).unwrap();
            assert_eq!(source.contains("coop_mat16x16"), cores == TensorCores::NVIDIA, "{name} for {cores}");
            let mut constants = vec![("DTYPE", 2.0)];
            constants.extend(tile.constants());
            spirv.push(validate(&format!("{tile:?} for {cores}"), &source, granted, &constants));
            // NVIDIA's limit is 48 KiB; only the deep, double and big tiles need more than 32.
            let bytes = tile.workgroup_bytes(cores.fragment);
            assert!(bytes <= 48 << 10, "{tile:?} on {cores}: {bytes} bytes must fit 48 KiB");
            let over_32k = matches!(
                tile,
                CoopTile::WideDeep
                    | CoopTile::WideDouble
                    | CoopTile::SquareDeep
                    | CoopTile::Big
                    | CoopTile::BigPrefetch
            ) && cores == TensorCores::NVIDIA;
            assert_eq!(bytes > 32 << 10, over_32k, "{tile:?}");
            assert!(tile.runs_on(cores), "{tile:?} on {cores}");
        }
        // Every wide tile also reads f16 x (other code: no conversion); the narrow one does not.
        for tile in CoopTile::ALL {
            let Some((name, source)) = tile.source(Activations::F16) else {
                assert!(!tile.is_wide(), "{tile:?} reads f16 x");
                continue;
            };
            let source = cores.specialize(name, &source).unwrap();
            let mut constants = vec![("DTYPE", 2.0)];
            constants.extend(tile.constants());
            let half = validate(&format!("{tile:?} for {cores}, f16 x"), &source, granted, &constants);
            assert_ne!(half, spirv[CoopTile::ALL.iter().position(|&t| t == tile).unwrap()], "{tile:?}, f16 x");
        }
        // PREFETCH and K_FRAGS reach the shader: the tiles compile to different code.
        let of = |tile: CoopTile| &spirv[CoopTile::ALL.iter().position(|&t| t == tile).unwrap()];
        assert_ne!(of(CoopTile::Wide), of(CoopTile::WidePrefetch), "Wide and WidePrefetch on {cores}");
        assert_ne!(of(CoopTile::WidePrefetch), of(CoopTile::WideDeep), "WidePrefetch and WideDeep on {cores}");
        assert_ne!(of(CoopTile::WidePrefetch), of(CoopTile::WideDouble), "WidePrefetch and WideDouble on {cores}");
        assert_ne!(of(CoopTile::Square), of(CoopTile::SquarePrefetch), "Square and SquarePrefetch on {cores}");
        assert_ne!(of(CoopTile::SquarePrefetch), of(CoopTile::SquareDeep), "SquarePrefetch and SquareDeep on {cores}");
        // Every loop part (PROBE) compiles, each to other code than the matmul.
        for tile in CoopTile::ALL.into_iter().filter(|t| t.has_loop_parts()) {
            let (name, source) = tile.source(Activations::F32).unwrap();
            let source = cores.specialize(name, &source).unwrap();
            for part in LoopPart::ALL {
                let mut constants = vec![("DTYPE", 2.0), ("PROBE", part as u32 as f64)];
                constants.extend(tile.constants());
                let probe = validate(&format!("{tile:?} {part:?} for {cores}"), &source, granted, &constants);
                assert_ne!(&probe, of(tile), "{tile:?} {part:?} on {cores}");
            }
        }
        // N_FRAGS reaches the shader too.
        assert_ne!(of(CoopTile::Square), of(CoopTile::Big), "Square and Big on {cores}");
        assert_ne!(of(CoopTile::Big), of(CoopTile::BigPrefetch), "Big and BigPrefetch on {cores}");
    }
    // The wide shader stages four vec4s per invocation: subgroups of side^2 / 8 only.
    for fixed_subgroup in [Some(8), Some(16), Some(64), None] {
        let cores = TensorCores { fixed_subgroup, ..TensorCores::NVIDIA };
        for tile in CoopTile::ALL {
            assert_eq!(tile.runs_on(cores), tile == CoopTile::Narrow, "{tile:?} on {cores}");
        }
    }
    assert_eq!(CoopTile::Wide.invocations(TensorCores::NVIDIA), 256);
    assert_eq!(CoopTile::Wide.invocations(lavapipe), 64);
    // The wide kernel needs a fixed subgroup width; the narrow one does not.
    let varying = TensorCores { fixed_subgroup: None, ..TensorCores::NVIDIA };
    assert!(varying.specialize("wide", &with_staging(COOPERATIVE_WIDE, Staging::PLAIN, Activations::F32)).is_err());
    assert!(varying.specialize("square", &with_staging(COOPERATIVE_SQUARE, Staging::PLAIN, Activations::F32)).is_err());
    assert!(varying.specialize("narrow", &with_common(COOPERATIVE)).is_ok());
    assert_eq!(CoopTile::for_adapter(varying, &wgpu::Limits::default()), CoopTile::Narrow);
    assert_eq!(CoopTile::Wide.output(Fragment::Sixteen), (128, 128));
    assert_eq!(CoopTile::Narrow.output(Fragment::Eight), (32, 32));
    assert_eq!(CoopTile::Wide.workgroup_bytes(Fragment::Sixteen), 30 << 10);
    assert_eq!(CoopTile::WideDeep.workgroup_bytes(Fragment::Sixteen), 46 << 10);
    assert_eq!(CoopTile::WideDeep.depth(Fragment::Sixteen), 64);
    // Two copies of 128 x 40 f16 per operand and unpadded 16x16 f32 output staging: 48 KiB,
    // exactly NVIDIA's limit.
    assert_eq!(CoopTile::WideDouble.workgroup_bytes(Fragment::Sixteen), 48 << 10);
    // The default on an H100-like adapter, and where 46 KiB does not fit the deep tile.
    let h100 = wgpu::Limits { max_compute_workgroup_storage_size: 49152, ..wgpu::Limits::default() };
    assert_eq!(CoopTile::for_adapter(TensorCores::NVIDIA, &h100), CoopTile::WideDeep);
    let small = wgpu::Limits { max_compute_workgroup_storage_size: 32 << 10, ..h100.clone() };
    assert!(!CoopTile::WideDeep.fits(TensorCores::NVIDIA, &small));
    assert_eq!(CoopTile::for_adapter(TensorCores::NVIDIA, &small), CoopTile::WidePrefetch);
    // Every tile but the deep, double and big ones (over 32 KiB) runs there.
    assert_eq!(CoopTile::all_for(TensorCores::NVIDIA, &small).len(), CoopTile::ALL.len() - 5);
    // The big tile: 128x256 outputs, 8 subgroups; 128 + 256 staged rows of 40 f16 and eight
    // subgroups' padded output staging: 40 KiB. Lavapipe halves every side.
    assert_eq!(CoopTile::Big.output(Fragment::Sixteen), (128, 256));
    assert_eq!(CoopTile::Big.output(Fragment::Eight), (64, 128));
    assert_eq!(CoopTile::Big.invocations(TensorCores::NVIDIA), 256);
    assert_eq!(CoopTile::BigPrefetch.workgroup_bytes(Fragment::Sixteen), (128 + 256) * 40 * 2 + 8 * 16 * 20 * 4);
    assert!(CoopTile::Big.fits(TensorCores::NVIDIA, &h100));
    // Two 128 x 72 f16 tiles and four subgroups' padded 16x16 f32 output staging.
    assert_eq!(CoopTile::SquareDeep.workgroup_bytes(Fragment::Sixteen), 2 * 128 * 72 * 2 + 4 * 16 * 20 * 4);
    // Without the cooperative-matrix capability naga refuses it.
    let module = naga::front::wgsl::parse_str(&with_common(COOPERATIVE)).unwrap();
    assert!(
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), granted - C::COOPERATIVE_MATRIX)
            .validate(&module)
            .is_err()
    );
}

/// The tensor-core kernel against the CPU on every case: bf16/f32 weights converted with
/// [`f16_weights`] (f16 as stored), activations rounded to f16 as the kernel stages them.
/// Tolerance: `1e-3 * (1 + |y|)` against that rounded reference (the products are exact
/// in f32, only the summation order differs), and `1e-2 * (1 + |y|)` against the
/// unrounded f32 reference (what f16 activations cost on these O(1)-O(10) values).
#[test]
fn cooperative_matches_cpu_or_says_it_was_skipped() {
    let gpu = gpu();
    let caps = &gpu.caps;
    let Some(cores) = gpu.tensor_cores() else {
        eprintln!(
            "SKIPPED: cooperative matmul on {} ({:?}): no 16x16x16 or 8x8x8 f16 x f16 -> f32 cooperative matrix \
             with f16 shaders and subgroups (configurations: {:?}, f16 {}, subgroups {})",
            gpu.info.name, gpu.info.device_type, caps.cooperative_matrices, caps.shader_f16, caps.subgroups
        );
        return;
    };
    // Every tile that runs here: the narrow one always, the wide ones where the adapter's
    // subgroups allow.
    let tiles = CoopTile::all_for(cores, &caps.limits);
    if !tiles.contains(&CoopTile::Wide) {
        eprintln!("SKIPPED: the wide cooperative tiles on {}: {cores}", gpu.info.name);
    }
    for tile in tiles {
        let variant = MatmulVariant::Cooperative { tile, cores, fallback: TileConfig::MEDIUM };
        let matmul = Matmul::new(&gpu.device, variant).unwrap();
        // The load-time check passes here, by a wide margin.
        let worst = matmul.self_check(&gpu.device, &gpu.queue).unwrap();
        assert!(worst <= SELF_CHECK_TOLERANCE / 100.0, "{tile:?}: self-check error {worst:e}");
        let cases = cases(&DTYPES);
        let results = run(&gpu, &matmul, &cases, Activations::F32, |_| DType::F16);
        let (mut worst_rounded, mut worst_exact) = (0f64, 0f64);
        for (case, (p, got)) in cases.iter().zip(&results) {
            let x16: Vec<f32> = p.x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
            let rounded = max_error(got, &reference(case, &x16, &p.w, &p.bias, &p.y0));
            let exact = max_error(got, &reference(case, &p.x, &p.w, &p.bias, &p.y0));
            assert!(rounded <= 1e-3, "{tile:?} on {}: {case}: error {rounded:e} against f16 inputs", gpu.info.name);
            assert!(exact <= 1e-2, "{tile:?} on {}: {case}: error {exact:e} against f32 inputs", gpu.info.name);
            worst_rounded = worst_rounded.max(rounded);
            worst_exact = worst_exact.max(exact);
        }
        eprintln!(
            "cooperative {tile:?} ({cores}) on {}: {} cases, worst error {worst_rounded:.1e} (f16 inputs), {worst_exact:.1e} (f32 inputs)",
            gpu.info.name,
            cases.len()
        );
        // f16 x, as the norms write it ahead of these tiles: the very same output bits,
        // since the tiles convert f32 x to f16 the same way before any product.
        if tile.is_wide() {
            let mut half_x = Matmul::new(&gpu.device, variant).unwrap();
            half_x.add_f16_input(&gpu.device, &gpu.queue).unwrap();
            let from_half = run(&gpu, &half_x, &cases, Activations::F16, |_| DType::F16);
            for (case, ((_, got), (_, want))) in cases.iter().zip(from_half.iter().zip(&results)) {
                assert!(
                    got.iter().map(|v| v.to_bits()).eq(want.iter().map(|v| v.to_bits())),
                    "{tile:?} on {}: {case}: f16 x gives other bits than f32 x",
                    gpu.info.name
                );
            }
            eprintln!("cooperative {tile:?} ({cores}), f16 x: the same bits as f32 x in all {} cases", cases.len());
            // The gates written as f16 for the down projection: exactly the f32 results
            // rounded (saturated) to f16, which is what the down projection would make of them.
            // (Inputs follow a case's position in the list: both lists hold the same cases.)
            let gated: Vec<Case> = cases.iter().filter(|case| case.epilogue.to_half().is_some()).cloned().collect();
            let to_half: Vec<Case> =
                gated.iter().map(|case| Case { epilogue: case.epilogue.to_half().unwrap(), ..case.clone() }).collect();
            let in_f32 = run(&gpu, &half_x, &gated, Activations::F16, |_| DType::F16);
            let in_f16 = run(&gpu, &half_x, &to_half, Activations::F16, |_| DType::F16);
            for (case, ((_, got), (_, want))) in to_half.iter().zip(in_f16.iter().zip(&in_f32)) {
                let rounded = want.iter().map(|&v| half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_f32().to_bits());
                assert!(
                    got.iter().map(|v| v.to_bits()).eq(rounded),
                    "{tile:?} on {}: {case}: the f16 gate output is not the f32 one rounded",
                    gpu.info.name
                );
            }
            eprintln!(
                "cooperative {tile:?} ({cores}), gates to f16: the f32 results rounded in all {} cases",
                gated.len()
            );
        } else {
            assert!(Matmul::new(&gpu.device, variant).unwrap().add_f16_input(&gpu.device, &gpu.queue).is_err());
        }
        // The bench's loop parts run the same grid on tiles that stay zero: each gives what
        // the matmul of x = 0 gives (the epilogue of bias and y alone), in every case.
        if tile.has_loop_parts() {
            let zeros = vec![0f32; cases.iter().map(|case| case.m * case.k).max().unwrap_or(0)];
            for part in LoopPart::ALL {
                let probe = Matmul::loop_part(&gpu.device, variant, part).unwrap();
                for (case, (p, got)) in cases.iter().zip(run(&gpu, &probe, &cases, Activations::F32, |_| DType::F16)) {
                    let want = reference(case, &zeros[..case.m * case.k], &p.w, &p.bias, &p.y0);
                    let error = max_error(&got, &want);
                    assert!(error <= 1e-6, "{tile:?} {part:?}: {case}: error {error:e} against x = 0");
                }
            }
            eprintln!("cooperative {tile:?} ({cores}), loop parts: the matmul of x = 0 in all {} cases", cases.len());
        } else {
            assert!(Matmul::loop_part(&gpu.device, variant, LoopPart::Products).is_err(), "{tile:?}");
        }
        // The fallback for weights left in bf16/f32 (f16 weights are the tensor-core
        // kernel's, checked above).
        let stored: Vec<Case> = cases.iter().filter(|case| case.dtype != DType::F16).cloned().collect();
        let fallback = run(&gpu, &matmul, &stored, Activations::F32, |case| case.dtype);
        for (case, (p, got)) in stored.iter().zip(&fallback) {
            let error = max_error(got, &reference(case, &p.x, &p.w, &p.bias, &p.y0));
            assert!(error <= 1e-5, "cooperative's tiled fallback: {case}: error {error:e}");
        }
    }
}

#[test]
fn f16_weights_converts_and_names_a_tensor_out_of_range() {
    let values = [0.0f32, 1.0, -2.5, 65504.0, -65504.0, 1e-3, 2.71875];
    let f32_bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
    let from_f32 = f16_weights("w", DType::F32, &f32_bytes).unwrap();
    let want: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    assert_eq!(from_f32, want);
    // bf16 has no 65504: its neighbours are 65280 (fits) and 65536 (does not).
    let (bf16_bytes, bf16_values) = encode(DType::BF16, &[0.0, 1.0, -2.5, 65280.0, -65280.0, 1e-3, 2.71875]);
    let from_bf16 = f16_weights("w", DType::BF16, &bf16_bytes).unwrap();
    let want: Vec<u8> = bf16_values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    assert_eq!(from_bf16, want);
    let (too_big, _) = encode(DType::BF16, &[1.0, 65504.0]);
    assert!(f16_weights("w", DType::BF16, &too_big).unwrap_err().to_string().contains("element 1 is 65536"));
    let (f16_bytes, _) = encode(DType::F16, &values);
    assert_eq!(f16_weights("w", DType::F16, &f16_bytes).unwrap(), f16_bytes);
    for bad in [65520.0f32, -1e6, f32::INFINITY, f32::NAN] {
        let mut big = vec![0.5f32; 200_000];
        big[123_456] = bad;
        let error = f16_weights("model.layers.3.mlp.down_proj.weight", DType::F32, bytemuck::cast_slice(&big))
            .unwrap_err()
            .to_string();
        assert!(error.contains("model.layers.3.mlp.down_proj.weight") && error.contains("element 123456"), "{error}");
    }
    assert!(f16_weights("w", DType::F32, &[0u8; 6]).is_err());
}

/// GFLOP/s of each variant and tile shape on this adapter (no assertion: numbers for the
/// README). `cargo test --locked -p steerlm-model --lib time_matmul_variants -- --ignored
/// --nocapture`; `STEERLM_MATMUL_BIG=1` adds 2048x2048x8192 (one dispatch each, ~20 s
/// apiece on lavapipe).
#[test]
#[ignore]
fn time_matmul_variants() {
    let mut variants = vec![MatmulVariant::RegisterBlocked];
    for tile in [
        TileConfig::SMALL,
        TileConfig { tile_k: 32, ..TileConfig::SMALL },
        TileConfig { tile_m: 32, tile_n: 64, ..TileConfig::SMALL },
        TileConfig::MEDIUM,
        TileConfig { tile_k: 32, ..TileConfig::MEDIUM },
        TileConfig { thread_m: 8, thread_n: 8, ..TileConfig::MEDIUM },
        TileConfig { thread_m: 8, ..TileConfig::MEDIUM },
        TileConfig::LARGE,
    ] {
        variants.push(MatmulVariant::Tiled(tile));
    }
    let mut shapes = vec![(512, 1536, 576, 3)];
    if std::env::var("STEERLM_MATMUL_BIG").is_ok_and(|v| v == "1") {
        shapes.push((2048, 2048, 8192, 1));
    }
    for (m, n, k, iterations) in shapes {
        for &variant in &variants {
            let (seconds, adapter) = time_variant(variant, Activations::F32, (m, n, k), iterations).unwrap();
            let gflops = 2.0 * (m * n * k) as f64 / seconds / 1e9;
            println!("{m}x{k}x{n} {:<34} {seconds:>9.4} s {gflops:>8.2} GFLOP/s  ({adapter})", variant.describe());
        }
    }
}
