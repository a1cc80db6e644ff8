//! The wgpu adapter: which one we take, the features and limits we ask for, and which
//! kernel variants it allows (what `steerlm gpu-info` prints).

use super::errors::UncapturedErrors;
use super::kernels::checks::ShaderChecks;
use super::kernels::coop::TensorCores;
use super::kernels::matmul::{CoopTile, MatmulVariant, TileConfig};
use crate::Precision;
use anyhow::{Context, Result, bail};

/// PCI vendor id of NVIDIA adapters.
const NVIDIA: u32 = 0x10de;

/// Which adapter to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterChoice {
    /// Only a hardware GPU; `None` when there is none.
    HardwareOnly,
    /// Any adapter, software ones (lavapipe) included.
    Any,
}

/// An open device and what it can do.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Capabilities,
    /// wgpu errors that reached no error scope (see [`super::errors`]).
    pub errors: UncapturedErrors,
}

/// What the kernels may use, as granted when the device was opened.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub limits: wgpu::Limits,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamps: bool,
    /// Cooperative-matrix configurations (empty without the feature).
    pub cooperative_matrices: Vec<wgpu::CooperativeMatrixProperties>,
}

impl Gpu {
    /// What the tensor-core kernels run on here: an f16 x f16 -> f32 cooperative matrix of
    /// 16x16x16 (tensor cores) or 8x8x8 (lavapipe), with f16 shaders and subgroups. `None`
    /// where any of that is missing.
    pub fn tensor_cores(&self) -> Option<TensorCores> {
        TensorCores::of(&self.info, &self.caps)
    }
}

/// Features we use when the adapter has them; none is required.
fn wanted_features() -> wgpu::Features {
    wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
}

/// Finds an adapter and opens a device with the adapter's own limits and every wanted
/// feature it has.
pub fn open_device(choice: AdapterChoice) -> Result<Option<Gpu>> {
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
    let features = adapter.features() & wanted_features();
    let cooperative = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("steerlm"),
        required_features: features,
        required_limits: adapter.limits(),
        // SAFETY: the only experimental feature we request is cooperative matrices, used
        // by one kernel that is checked against the f32 path by its own test.
        experimental_features: if cooperative {
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        },
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .with_context(|| format!("opening the wgpu device {}", info.name))?;
    let caps = Capabilities {
        limits: device.limits(),
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        subgroups: features.contains(wgpu::Features::SUBGROUP),
        timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        cooperative_matrices: if cooperative { adapter.cooperative_matrix_properties() } else { Vec::new() },
    };
    let errors = UncapturedErrors::install(&device);
    Ok(Some(Gpu { device, queue, info, caps, errors }))
}

/// Which attention kernel runs over whole sequences (the last layer's single rows
/// always use the row kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionVariant {
    /// `attention.wgsl`: one workgroup per (query row, head).
    Rows,
    /// `flash_attention.wgsl`: one workgroup per (block of queries, KV head).
    Flash,
    /// `flash_attention_coop.wgsl`: the same blocks, QK^T and PV on tensor cores, built
    /// for these.
    FlashTensorCores(TensorCores),
}

impl AttentionVariant {
    pub fn name(self) -> &'static str {
        match self {
            AttentionVariant::Rows => "rows",
            AttentionVariant::Flash => "flash",
            AttentionVariant::FlashTensorCores(_) => "flash (tensor cores, f16)",
        }
    }
}

/// The kernel variants a forward pass uses on one adapter, and why.
#[derive(Clone, Debug)]
pub struct KernelPlan {
    pub matmul: MatmulVariant,
    pub matmul_reason: String,
    pub attention: AttentionVariant,
    pub attention_reason: String,
    /// Whether weights are converted to f16 at load (the tensor-core path).
    pub f16_weights: bool,
    /// Whether the norms ahead of the tensor-core matmuls write f16 for them to read
    /// (`STEERLM_F16_ACTIVATIONS=1`; the same scores, unmeasured on hardware).
    pub f16_activations: bool,
}

impl KernelPlan {
    pub fn choose(info: &wgpu::AdapterInfo, caps: &Capabilities, precision: Precision) -> Self {
        let tile = TileConfig::for_adapter(info, &caps.limits);
        let software = info.device_type == wgpu::DeviceType::Cpu;
        let tensor_cores = |cores: TensorCores| MatmulVariant::Cooperative {
            tile: CoopTile::for_adapter(cores, &caps.limits),
            cores,
            fallback: tile,
        };
        let (matmul, matmul_reason) = match (precision, TensorCores::of(info, caps)) {
            (Precision::Auto, Some(cores)) if !software => (
                tensor_cores(cores),
                format!("f16 x f16 -> f32 cooperative matrices (tensor cores: {cores}); weights become f16 at load"),
            ),
            (Precision::F16, Some(cores)) => (
                tensor_cores(cores),
                format!("--precision f16: f16 x f16 -> f32 cooperative matrices ({cores}); weights become f16 at load"),
            ),
            // Lavapipe's cooperative matrices are emulated: correct (the kernels' tests run
            // there) but slower. Measured on Mesa 26.1 (`gpu-info --bench`, 512x576x1536):
            // register-blocked 5.7 GFLOP/s, tensor-core 64x64 tile 4.1, 32x32 tile 3.2.
            (Precision::Auto, Some(_)) if software => (
                MatmulVariant::RegisterBlocked,
                "software adapter: its cooperative matrices are emulated, the register-blocked f32 kernel is faster"
                    .to_owned(),
            ),
            // Measured on lavapipe: the tiled kernel is 1.1x the register-blocked one on the
            // MLP shape alone but 0.9-0.95x over the whole SmolLM2-shaped model, where
            // "workgroup memory" is ordinary memory and barriers cost threads.
            (_, _) if software => (
                MatmulVariant::RegisterBlocked,
                "software adapter: register blocking beats workgroup tiles over a whole model there".to_owned(),
            ),
            // Measured on an H100 (`gpu-info --bench`, three Llama MLP shapes): 7.2-7.3
            // TFLOP/s register-blocked, 7.5-7.7 tiled (2.2 with wgpu's loop counter, which
            // the kernels no longer carry). Whole models were measured with the
            // register-blocked kernel (12.4 TFLOP/s on Llama-3.2-1B's matmuls), so it stays
            // until the tiled one is measured there too. Other vendors are unmeasured.
            (_, _) if info.vendor == NVIDIA => (
                MatmulVariant::RegisterBlocked,
                format!(
                    "{}NVIDIA: the register-blocked f32 kernel (the tiled one is within 5% of it on an H100)",
                    if precision == Precision::F32 { "--precision f32 on " } else { "no tensor cores; on " }
                ),
            ),
            (Precision::Auto | Precision::F16, _) => (
                MatmulVariant::Tiled(tile),
                if caps.cooperative_matrices.is_empty() {
                    "no cooperative matrices on this adapter, so the f32 tiled kernel".to_owned()
                } else {
                    "no 16x16x16 or 8x8x8 f16 -> f32 cooperative matrix (with f16 shaders and subgroups), so the \
                     f32 tiled kernel"
                        .to_owned()
                },
            ),
            (Precision::F32, _) => (MatmulVariant::Tiled(tile), "--precision f32: the f32 tiled kernel".to_owned()),
        };
        let request = std::env::var("STEERLM_COOP_TILE").ok().filter(|v| !v.trim().is_empty());
        let (matmul, matmul_reason) = with_requested_coop_tile(matmul, matmul_reason, request.as_deref(), &caps.limits);
        let mut plan = Self::with_matmul(matmul, matmul_reason);
        plan.request_f16_activations(std::env::var("STEERLM_F16_ACTIVATIONS").ok().as_deref());
        if let MatmulVariant::Cooperative { tile, .. } = plan.matmul
            && tile.is_wide()
        {
            let value = std::env::var("STEERLM_TILE_GROUP").ok();
            match super::kernels::matmul::tile_group(value.as_deref()) {
                Ok(rows) if value.is_some_and(|v| !v.trim().is_empty()) => {
                    plan.matmul_reason += &format!("; tiles walked {rows} rows at a time as STEERLM_TILE_GROUP asks")
                }
                Ok(_) => {}
                Err(why) => plan.matmul_reason += &format!("; {why}, ignored"),
            }
        }
        match super::kernels::checks::checks() {
            ShaderChecks::Trusted => {}
            ShaderChecks::Full => {
                plan.matmul_reason += "; every kernel keeps wgpu's loop counter (STEERLM_SHADER_CHECKS=full)"
            }
            ShaderChecks::None => {
                plan.matmul_reason +=
                    "; every kernel without index clamps or division guards (STEERLM_SHADER_CHECKS=none)"
            }
        }
        plan
    }

    /// Takes `STEERLM_F16_ACTIVATIONS` set to `value`: `1` turns f16 activations on where the
    /// matmul is a wide tensor-core tile; the reason says what was done with the request.
    pub fn request_f16_activations(&mut self, value: Option<&str>) {
        const NAME: &str = "STEERLM_F16_ACTIVATIONS";
        match super::kernels::switch(NAME, value) {
            Ok(false) => {}
            Ok(true) => match self.matmul {
                MatmulVariant::Cooperative { tile, .. } if tile.is_wide() => {
                    self.f16_activations = true;
                    self.matmul_reason += "; its inputs stored as f16 (by the norms, the gate and attention) as STEERLM_F16_ACTIVATIONS asks";
                }
                _ => self.matmul_reason += &format!("; {NAME}=1 needs a wide tensor-core tile, ignored"),
            },
            Err(why) => self.matmul_reason += &format!("; {why}, ignored"),
        }
    }

    /// The plan around a chosen matmul: f16 weights and tensor-core attention go with the
    /// tensor-core matmul (its wide tile, which means subgroups of a fixed width).
    pub fn with_matmul(matmul: MatmulVariant, matmul_reason: String) -> Self {
        let f16_weights = matches!(matmul, MatmulVariant::Cooperative { .. });
        // What an on/off variable asks of the tensor-core flash kernel, for its reason.
        let asked = |name: &str, what: &str| match super::kernels::switch(name, std::env::var(name).ok().as_deref()) {
            Ok(true) => format!("; {what} as {name} asks"),
            Ok(false) => String::new(),
            Err(why) => format!("; {why}, ignored"),
        };
        let (attention, attention_reason) = if let MatmulVariant::Cooperative { tile, cores, .. } = matmul
            && tile.is_wide()
        {
            (
                AttentionVariant::FlashTensorCores(cores),
                format!(
                    "flash attention with QK^T and PV on tensor cores ({cores}; models whose head size is not a \
                     multiple of {} up to {} use the f32 flash kernel){}{}",
                    cores.fragment.side(),
                    super::kernels::attention::flash_coop_max_head_dim(cores.fragment),
                    asked("STEERLM_FLASH_LOADS_FIRST", "K/V loads first"),
                    asked("STEERLM_FLASH_ONE_PASS", "one pass"),
                ),
            )
        } else {
            (
                AttentionVariant::Flash,
                "K/V tiles in workgroup memory shared by a block of queries and its GQA group (models whose head \
                 size is not a multiple of 4 up to 256, or whose GQA group is above 8, use the row kernel)"
                    .to_owned(),
            )
        };
        KernelPlan { matmul, matmul_reason, attention, attention_reason, f16_weights, f16_activations: false }
    }
}

/// `matmul` with the tensor-core tile `request` names (`STEERLM_COOP_TILE`: narrow, wide,
/// wide-prefetch, wide-deep, wide-double, square, square-prefetch or square-deep), for measuring one tile against another in
/// whole models. A request that names no tile, or one that does not run here, changes
/// nothing and says so in the reason.
fn with_requested_coop_tile(
    matmul: MatmulVariant,
    reason: String,
    request: Option<&str>,
    limits: &wgpu::Limits,
) -> (MatmulVariant, String) {
    let (Some(request), MatmulVariant::Cooperative { cores, fallback, .. }) = (request, matmul) else {
        return (matmul, reason);
    };
    let keys: Vec<&str> = CoopTile::ALL.iter().map(|t| t.key()).collect();
    match CoopTile::ALL.into_iter().find(|t| t.key() == request.trim()) {
        Some(tile) if tile.fits(cores, limits) => (
            MatmulVariant::Cooperative { tile, cores, fallback },
            format!("{reason}; tile {} as STEERLM_COOP_TILE asks", tile.key()),
        ),
        Some(tile) => (matmul, format!("{reason}; STEERLM_COOP_TILE={} does not run on {cores}, ignored", tile.key())),
        None => (matmul, format!("{reason}; STEERLM_COOP_TILE={request:?} is not one of {}, ignored", keys.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An H100 as wgpu reports it (`gpu-info` on one), and the same with another vendor's
    /// 64-wide subgroups.
    fn hardware(vendor: u32, subgroup: u32) -> (wgpu::AdapterInfo, Capabilities) {
        let mut info = open_device(AdapterChoice::Any).unwrap().unwrap().info;
        info.vendor = vendor;
        info.device_type = wgpu::DeviceType::DiscreteGpu;
        (info.subgroup_min_size, info.subgroup_max_size) = (subgroup, subgroup);
        let matrix = wgpu::CooperativeMatrixProperties {
            m_size: 16,
            n_size: 16,
            k_size: 16,
            ab_type: wgpu::CooperativeScalarType::F16,
            cr_type: wgpu::CooperativeScalarType::F32,
            saturating_accumulation: false,
        };
        let caps = Capabilities {
            limits: wgpu::Limits {
                max_compute_workgroup_storage_size: 48 << 10,
                max_compute_invocations_per_workgroup: 1024,
                max_compute_workgroup_size_x: 1024,
                max_compute_workgroup_size_y: 1024,
                ..wgpu::Limits::default()
            },
            shader_f16: true,
            subgroups: true,
            timestamps: true,
            cooperative_matrices: vec![matrix],
        };
        (info, caps)
    }

    #[test]
    fn plans_follow_the_hardware_measurements() {
        let (info, caps) = hardware(NVIDIA, 32);
        let auto = KernelPlan::choose(&info, &caps, Precision::Auto);
        assert!(matches!(auto.matmul, MatmulVariant::Cooperative { tile: CoopTile::WideDeep, .. }), "{auto:?}");
        assert_eq!(auto.attention, AttentionVariant::FlashTensorCores(TensorCores::NVIDIA));
        assert!(auto.f16_weights);
        let exact = KernelPlan::choose(&info, &caps, Precision::F32);
        assert_eq!(exact.matmul, MatmulVariant::RegisterBlocked, "{exact:?}");
        assert_eq!(exact.attention, AttentionVariant::Flash);
        assert!(!exact.f16_weights);
        // 64-wide subgroups: the narrow tensor-core tile and f32 flash attention.
        let (info, caps) = hardware(0x1002, 64);
        let auto = KernelPlan::choose(&info, &caps, Precision::Auto);
        assert!(matches!(auto.matmul, MatmulVariant::Cooperative { tile: CoopTile::Narrow, .. }), "{auto:?}");
        assert_eq!(auto.attention, AttentionVariant::Flash);
        let exact = KernelPlan::choose(&info, &caps, Precision::F32);
        assert!(matches!(exact.matmul, MatmulVariant::Tiled(_)), "{exact:?}");
    }

    /// `STEERLM_F16_ACTIVATIONS`: `1` is taken with a wide tensor-core tile, ignored (and
    /// said so) with the narrow one or f32 kernels; other values are named as ignored.
    #[test]
    fn f16_activations_are_taken_only_for_wide_tensor_core_tiles() {
        let (info, caps) = hardware(NVIDIA, 32);
        let requested = |precision: Precision, value: Option<&str>| {
            let mut plan = KernelPlan::choose(&info, &caps, precision);
            plan.f16_activations = false;
            plan.request_f16_activations(value);
            plan
        };
        let on = requested(Precision::Auto, Some(" 1 "));
        assert!(on.f16_activations && on.matmul_reason.contains("as STEERLM_F16_ACTIVATIONS asks"), "{on:?}");
        for value in [None, Some(""), Some("0")] {
            let off = requested(Precision::Auto, value);
            assert!(!off.f16_activations && !off.matmul_reason.contains("STEERLM_F16_ACTIVATIONS"), "{off:?}");
        }
        let odd = requested(Precision::Auto, Some("yes"));
        assert!(
            !odd.f16_activations
                && odd.matmul_reason.contains("STEERLM_F16_ACTIVATIONS=\"yes\" is not 0 or 1, ignored")
        );
        let exact = requested(Precision::F32, Some("1"));
        assert!(!exact.f16_activations && exact.matmul_reason.contains("needs a wide tensor-core tile, ignored"));
        let (info, caps) = hardware(0x1002, 64);
        let mut narrow = KernelPlan::choose(&info, &caps, Precision::Auto);
        narrow.request_f16_activations(Some("1"));
        assert!(!narrow.f16_activations, "{narrow:?}");
    }

    /// `STEERLM_TILE_GROUP`: 1 to 64 rows of tiles, 8 when unset; anything else is named.
    #[test]
    fn tile_groups_take_1_to_64() {
        use crate::gpu::kernels::matmul::tile_group;
        assert_eq!(tile_group(None), Ok(8));
        assert_eq!(tile_group(Some(" ")), Ok(8));
        assert_eq!(tile_group(Some("1")), Ok(1));
        assert_eq!(tile_group(Some(" 64 ")), Ok(64));
        for bad in ["0", "65", "-1", "eight", "4.5"] {
            let why = tile_group(Some(bad)).unwrap_err();
            assert!(why.contains("is not a whole number from 1 to 64"), "{bad}: {why}");
        }
    }

    #[test]
    fn a_requested_coop_tile_is_taken_where_it_runs() {
        let (info, caps) = hardware(NVIDIA, 32);
        let auto = KernelPlan::choose(&info, &caps, Precision::Auto);
        let request = |name: &str, limits: &wgpu::Limits| {
            with_requested_coop_tile(auto.matmul, auto.matmul_reason.clone(), Some(name), limits)
        };
        let (prefetch, reason) = request("wide", &caps.limits);
        assert!(matches!(prefetch, MatmulVariant::Cooperative { tile: CoopTile::Wide, .. }), "{reason}");
        assert!(reason.ends_with("tile wide as STEERLM_COOP_TILE asks"), "{reason}");
        let (prefetch_only, _) = request("wide-prefetch", &caps.limits);
        assert!(matches!(prefetch_only, MatmulVariant::Cooperative { tile: CoopTile::WidePrefetch, .. }));
        let (square, _) = request("square-prefetch", &caps.limits);
        assert!(matches!(square, MatmulVariant::Cooperative { tile: CoopTile::SquarePrefetch, .. }));
        assert_eq!(
            KernelPlan::with_matmul(prefetch, reason).attention,
            AttentionVariant::FlashTensorCores(TensorCores::NVIDIA)
        );
        let (narrow, _) = request(" narrow ", &caps.limits);
        assert!(matches!(narrow, MatmulVariant::Cooperative { tile: CoopTile::Narrow, .. }));
        let (big, _) = request("big", &caps.limits);
        assert!(matches!(big, MatmulVariant::Cooperative { tile: CoopTile::Big, .. }));
        let (same, reason) = request("huge", &caps.limits);
        assert_eq!(same, auto.matmul);
        assert!(
            reason.contains(
                "\"huge\" is not one of narrow, wide, wide-prefetch, wide-deep, wide-double, square, square-prefetch, \
                 square-deep, big, big-prefetch, ignored"
            ),
            "{reason}"
        );
        let small = wgpu::Limits { max_compute_workgroup_storage_size: 16 << 10, ..caps.limits.clone() };
        let (same, reason) = request("wide", &small);
        assert_eq!(same, auto.matmul);
        assert!(reason.contains("STEERLM_COOP_TILE=wide does not run on"), "{reason}");
        // Without tensor cores there is nothing to choose.
        let exact = KernelPlan::choose(&info, &caps, Precision::F32);
        assert_eq!(with_requested_coop_tile(exact.matmul, String::new(), Some("wide"), &caps.limits).0, exact.matmul);
    }

    /// Lavapipe 26 (8x8x8 matrices, subgroups of 8): `auto` stays on f32, `f16` takes the
    /// tensor-core kernels built for 8x8 fragments and subgroups of 8.
    #[test]
    fn software_tensor_cores_only_on_request() {
        use super::super::kernels::coop::Fragment;
        let (mut info, mut caps) = hardware(NVIDIA, 8);
        info.device_type = wgpu::DeviceType::Cpu;
        caps.cooperative_matrices[0] =
            wgpu::CooperativeMatrixProperties { m_size: 8, n_size: 8, k_size: 8, ..caps.cooperative_matrices[0] };
        let lavapipe = TensorCores { fragment: Fragment::Eight, fixed_subgroup: Some(8) };
        assert_eq!(TensorCores::of(&info, &caps), Some(lavapipe));
        let auto = KernelPlan::choose(&info, &caps, Precision::Auto);
        assert_eq!(auto.matmul, MatmulVariant::RegisterBlocked, "{auto:?}");
        assert!(!auto.f16_weights);
        let f16 = KernelPlan::choose(&info, &caps, Precision::F16);
        assert!(
            matches!(f16.matmul, MatmulVariant::Cooperative { tile: CoopTile::WideDeep, cores, .. } if cores == lavapipe),
            "{f16:?}"
        );
        assert_eq!(f16.attention, AttentionVariant::FlashTensorCores(lavapipe));
        assert!(f16.f16_weights);
        // Subgroups of varying width: the narrow tile and f32 flash attention.
        info.subgroup_max_size = 32;
        let f16 = KernelPlan::choose(&info, &caps, Precision::F16);
        assert!(matches!(f16.matmul, MatmulVariant::Cooperative { tile: CoopTile::Narrow, .. }), "{f16:?}");
        assert_eq!(f16.attention, AttentionVariant::Flash);
        // Without f16 shaders the matrices are of no use.
        caps.shader_f16 = false;
        assert_eq!(TensorCores::of(&info, &caps), None);
    }
}
