//! Row normalisation: RMSNorm (`shaders/rms_norm.wgsl`) or Nemotron's LayerNorm1P
//! (`shaders/layer_norm_1p.wgsl`), one workgroup per row.

use super::{Access, Kernel, Recorder, grid};
use anyhow::Result;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct NormParams {
    pub rows: u32,
    pub hidden: u32,
    pub eps: f32,
    pub has_bias: u32,
}

pub struct Norm {
    kernel: Kernel,
}

impl Norm {
    /// `layer_norm_1p`: Nemotron's `(x - mean) / std * (1 + w) + b`; else RMSNorm.
    pub fn new(device: &wgpu::Device, layer_norm_1p: bool) -> Result<Self> {
        let (name, source) = if layer_norm_1p {
            ("layer_norm_1p", include_str!("../../../../../shaders/layer_norm_1p.wgsl"))
        } else {
            ("rms_norm", include_str!("../../../../../shaders/rms_norm.wgsl"))
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
