//! Row normalisation: RMSNorm (`shaders/rms_norm.wgsl`) or Nemotron's LayerNorm1P
//! (`shaders/layer_norm_1p.wgsl`), one workgroup per row.

use super::{Access, Kernel, Recorder, grid};
use crate::model::arch::NormKind;
use anyhow::Result;
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
}

impl Norm {
    pub fn new(device: &wgpu::Device, kind: NormKind) -> Result<Self> {
        let (name, source) = match kind {
            NormKind::LayerNorm1P => ("layer_norm_1p", include_str!("../../../../../shaders/layer_norm_1p.wgsl")),
            // Gemma's `1 + w` is folded into the weight at upload.
            NormKind::Rms | NormKind::RmsUnitOffset => {
                ("rms_norm", include_str!("../../../../../shaders/rms_norm.wgsl"))
            }
        };
        let buffers = [Access::Read, Access::Read, Access::Read, Access::ReadWrite];
        let kernel = Kernel::new(device, name, source, &[], std::mem::size_of::<NormParams>() as u64, &buffers)?;
        Ok(Norm { kernel })
    }

    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: NormParams,
        x: &wgpu::Buffer,
        weight: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) {
        let groups = grid(params.rows as usize, 1);
        rec.dispatch(&self.kernel, &params, &[x, weight, bias, out], groups, 0.0);
    }
}
