//! Rotary position embedding applied in place to q or k (`shaders/rotary.wgsl`), from
//! cos/sin tables computed on the CPU (see `model::rope`).

use super::{Access, Kernel, Recorder, grid};
use anyhow::Result;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RotaryParams {
    pub rows: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub rotary_dim: u32,
}

pub struct Rotary {
    kernel: Kernel,
}

impl Rotary {
    pub fn new(device: &wgpu::Device) -> Result<Self> {
        let buffers = [Access::ReadWrite, Access::Read, Access::Read, Access::Read];
        let source = include_str!("../../../../shaders/rotary.wgsl");
        let kernel = Kernel::new(device, "rotary", source, &[], std::mem::size_of::<RotaryParams>() as u64, &buffers)?;
        Ok(Rotary { kernel })
    }

    /// Rotates `x` (`[rows, heads * head_dim]`), row r at position `positions[r]`.
    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: RotaryParams,
        x: &wgpu::Buffer,
        positions: &wgpu::Buffer,
        cos: &wgpu::Buffer,
        sin: &wgpu::Buffer,
    ) {
        if params.rotary_dim == 0 {
            return;
        }
        let count = params.rows as usize * params.heads as usize * params.rotary_dim as usize / 2;
        rec.dispatch(&self.kernel, &params, &[x, positions, cos, sin], grid(count, 256), 0.0);
    }
}
