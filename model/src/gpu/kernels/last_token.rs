//! Gathers chosen rows (each sequence's last token) into a dense matrix
//! (`shaders/last_token.wgsl`).

use super::{Access, Kernel, Recorder, grid};
use anyhow::Result;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct GatherParams {
    pub sequences: u32,
    pub hidden: u32,
    pub _pad: [u32; 2],
}

pub struct GatherRows {
    kernel: Kernel,
}

impl GatherRows {
    pub fn new(device: &wgpu::Device) -> Result<Self> {
        let buffers = [Access::Read, Access::Read, Access::ReadWrite];
        let source = include_str!("../../../../shaders/last_token.wgsl");
        let size = std::mem::size_of::<GatherParams>() as u64;
        Ok(GatherRows { kernel: Kernel::new(device, "last_token", source, &[], size, &buffers)? })
    }

    /// `out[i] = x[rows[i]]` for `params.sequences` rows of `params.hidden` 4-byte values
    /// (f32s, or pairs of f16s), copied as bits.
    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: GatherParams,
        x: &wgpu::Buffer,
        rows: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) {
        let groups = grid(params.sequences as usize * params.hidden as usize, 256);
        rec.dispatch(&self.kernel, &params, &[x, rows, out], groups, 0.0);
    }
}
