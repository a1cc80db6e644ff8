//! Row normalisation: RMSNorm (`shaders/rms_norm.wgsl`) or Nemotron's LayerNorm1P
//! (`shaders/layer_norm_1p.wgsl`), one workgroup per row.

use super::matmul::Activations;
use super::{Access, Kernel, Recorder, grid};
use crate::arch::NormKind;
use anyhow::{Result, bail};
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct NormParams {
    pub rows: u32,
    pub hidden: u32,
    pub eps: f32,
    pub has_bias: u32,
    /// Add the result to `out` (rms_norm.wgsl only; Gemma2's sandwich norms).
    pub accumulate: u32,
    pub _pad: [u32; 3],
}

pub struct Norm {
    kernel: Kernel,
    /// The same norm writing f16 (saturated), for matmuls that read f16 x
    /// ([`Norm::add_f16_output`]).
    f16_out: Option<Kernel>,
    kind: NormKind,
}

const RMS_NORM: &str = include_str!("../../../../shaders/rms_norm.wgsl");
const BUFFERS: [Access; 4] = [Access::Read, Access::Read, Access::Read, Access::ReadWrite];

/// `rms_norm.wgsl` writing f16.
pub fn rms_norm_f16_source() -> String {
    super::with_f16_output(RMS_NORM)
}

impl Norm {
    pub fn new(device: &wgpu::Device, kind: NormKind) -> Result<Self> {
        let (name, source) = match kind {
            NormKind::LayerNorm1P => ("layer_norm_1p", include_str!("../../../../shaders/layer_norm_1p.wgsl")),
            // Gemma's `1 + w` is folded into the weight at upload.
            NormKind::Rms | NormKind::RmsUnitOffset => ("rms_norm", RMS_NORM),
        };
        let kernel = Kernel::new(device, name, source, &[], std::mem::size_of::<NormParams>() as u64, &BUFFERS)?;
        Ok(Norm { kernel, f16_out: None, kind })
    }

    /// Makes this norm able to write f16 ([`Activations::F16`]): RMSNorm only (the device
    /// needs f16 shaders).
    pub fn add_f16_output(&mut self, device: &wgpu::Device) -> Result<()> {
        if self.kind == NormKind::LayerNorm1P {
            bail!("LayerNorm1P writes f32 only");
        }
        let size = std::mem::size_of::<NormParams>() as u64;
        self.f16_out = Some(Kernel::new(device, "rms_norm_f16", &rms_norm_f16_source(), &[], size, &BUFFERS)?);
        Ok(())
    }

    /// Records the norm of `params.rows` rows of `x` into `out`, stored as `out_stored`
    /// says (f16 only from a norm made able to ([`Norm::add_f16_output`]), never accumulating;
    /// the caller's to ensure, checked in debug builds).
    #[allow(clippy::too_many_arguments)]
    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: NormParams,
        out_stored: Activations,
        x: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) {
        let kernel = match (out_stored, &self.f16_out) {
            (Activations::F16, Some(f16_out)) => {
                debug_assert_eq!(params.accumulate, 0, "an f16 norm output is stored, never accumulated");
                f16_out
            }
            (Activations::F16, None) => {
                debug_assert!(false, "f16 output from a norm without its f16 kernel");
                &self.kernel
            }
            (Activations::F32, _) => &self.kernel,
        };
        let groups = grid(params.rows as usize, 1);
        rec.dispatch(kernel, &params, &[x, weight, bias, out], groups, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::kernels::validate_wgsl;
    use wgpu::naga::valid::Capabilities;

    /// Both RMSNorm outputs compile, to different code (the f16 one stores halves).
    #[test]
    fn rms_norm_validates_with_naga_for_f32_and_f16_output() {
        let f32_out = validate_wgsl("rms_norm.wgsl", RMS_NORM, Capabilities::empty(), &[]);
        let f16_out = validate_wgsl("rms_norm.wgsl (f16)", &rms_norm_f16_source(), Capabilities::SHADER_FLOAT16, &[]);
        assert_ne!(f32_out, f16_out);
    }
}
