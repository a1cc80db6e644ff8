//! What the tensor-core shaders (`matmul_coop*.wgsl`, `flash_attention_coop.wgsl`) are
//! built for: the cooperative-matrix fragment and the subgroup width.
//!
//! Those shaders are written for NVIDIA's tensor cores: 16x16x16 f16 x f16 -> f32
//! cooperative matrices and subgroups of 32, with every size derived from
//! `const FRAG: u32 = 16u;` and `const SUBGROUP: u32 = 32u;`. Mesa's lavapipe (26.1 and
//! later) offers 8x8x8 matrices and subgroups of 8, so for it the same source is rewritten
//! to `FRAG = 8`, `SUBGROUP = 8` and `coop_mat8x8` types: the same code, every tile halved
//! and a quarter of the invocations per subgroup's share. That is how the tensor-core
//! kernels run on a machine without a GPU, and in CI.

use anyhow::{Result, bail};

/// Side of the square f16 x f16 -> f32 cooperative-matrix fragment a shader is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// 16x16x16: tensor cores (NVIDIA, and most hardware offering cooperative matrices).
    Sixteen,
    /// 8x8x8: lavapipe's cooperative matrices.
    Eight,
}

impl Fragment {
    pub fn side(self) -> usize {
        match self {
            Fragment::Sixteen => 16,
            Fragment::Eight => 8,
        }
    }

    /// The preferred fragment among an adapter's cooperative-matrix configurations: a square
    /// one with f16 inputs and an f32 accumulator, 16 before 8.
    pub fn best_of(configurations: &[wgpu::CooperativeMatrixProperties]) -> Option<Fragment> {
        let offers = |side: u32| {
            configurations.iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (side, side, side)
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            })
        };
        [Fragment::Sixteen, Fragment::Eight].into_iter().find(|f| offers(f.side() as u32))
    }
}

impl std::fmt::Display for Fragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = self.side();
        write!(f, "{side}x{side}x{side}")
    }
}

/// Subgroup widths the fixed-subgroup kernels (the wide matmul, flash attention) are built
/// for: their workgroups are a fixed number of subgroups.
const FIXED_SUBGROUPS: [u32; 3] = [8, 16, 32];

/// An adapter's tensor cores as the shaders see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorCores {
    pub fragment: Fragment,
    /// The subgroup width where the adapter's is fixed (`subgroup_min_size ==
    /// subgroup_max_size`), else `None`.
    pub fixed_subgroup: Option<u32>,
}

impl TensorCores {
    /// NVIDIA's: 16x16x16 matrices, subgroups of 32 (what the shaders are written for).
    pub const NVIDIA: TensorCores = TensorCores { fragment: Fragment::Sixteen, fixed_subgroup: Some(32) };

    /// The adapter's, where it has an f16 cooperative matrix, f16 shaders and subgroups.
    pub fn of(info: &wgpu::AdapterInfo, caps: &crate::gpu::Capabilities) -> Option<TensorCores> {
        let fragment = Fragment::best_of(&caps.cooperative_matrices).filter(|_| caps.shader_f16 && caps.subgroups)?;
        let fixed = info.subgroup_min_size == info.subgroup_max_size;
        Some(TensorCores { fragment, fixed_subgroup: fixed.then_some(info.subgroup_min_size) })
    }

    /// The subgroup width of the fixed-subgroup kernels, where they run here.
    pub fn kernel_subgroup(&self) -> Option<u32> {
        self.fixed_subgroup.filter(|w| FIXED_SUBGROUPS.contains(w))
    }

    /// `source` (written for 16x16 fragments and subgroups of 32) built for these tensor
    /// cores. It must declare `const FRAG: u32 = 16u;` exactly once and name its matrices
    /// `coop_mat16x16`; where it declares `const SUBGROUP: u32 = 32u;` it needs a fixed
    /// subgroup width here ([`Self::kernel_subgroup`]).
    pub fn specialize(&self, name: &str, source: &str) -> Result<String> {
        const FRAG: &str = "const FRAG: u32 = 16u;";
        const SUBGROUP: &str = "const SUBGROUP: u32 = 32u;";
        if source.matches(FRAG).count() != 1 {
            bail!("{name}: a tensor-core shader declares `{FRAG}` exactly once");
        }
        let mut source = match self.fragment {
            Fragment::Sixteen => source.to_owned(),
            Fragment::Eight => source.replace(FRAG, "const FRAG: u32 = 8u;").replace("coop_mat16x16", "coop_mat8x8"),
        };
        if source.contains(SUBGROUP) {
            let Some(width) = self.kernel_subgroup() else {
                bail!(
                    "{name} needs subgroups of a fixed width (8, 16 or 32); this adapter's are {}",
                    self.fixed_subgroup.map_or("of varying width".to_owned(), |w| format!("{w} wide"))
                );
            };
            source = source.replace(SUBGROUP, &format!("const SUBGROUP: u32 = {width}u;"));
        }
        Ok(source)
    }
}

impl std::fmt::Display for TensorCores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fixed_subgroup {
            Some(width) => write!(f, "{} matrices, subgroups of {width}", self.fragment),
            None => write!(f, "{} matrices, subgroups of varying width", self.fragment),
        }
    }
}
