//! Token embedding lookup (`shaders/embedding.wgsl`): one row of the table per token,
//! read in its stored dtype. A table split into row parts takes one dispatch per part.

use super::{Access, Kernel, Recorder, dtype_index, grid};
use crate::weights::DType;
use anyhow::Result;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EmbeddingParams {
    pub tokens: u32,
    pub hidden: u32,
    /// First table row held by this part.
    pub row_start: u32,
    /// Rows in this part.
    pub rows: u32,
    /// Multiplies every value (Gemma's `sqrt(hidden)`; 1 elsewhere).
    pub scale: f32,
    pub _pad: [u32; 3],
}

pub struct Embedding {
    per_dtype: [Kernel; 3],
}

impl Embedding {
    pub fn new(device: &wgpu::Device) -> Result<Self> {
        let source = include_str!("../../../../shaders/embedding.wgsl");
        let size = std::mem::size_of::<EmbeddingParams>() as u64;
        let buffers = [Access::Read, Access::Read, Access::ReadWrite];
        let kernel = |dtype: f64| Kernel::new(device, "embedding", source, &[("DTYPE", dtype)], size, &buffers);
        Ok(Embedding { per_dtype: [kernel(0.0)?, kernel(1.0)?, kernel(2.0)?] })
    }

    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: EmbeddingParams,
        dtype: DType,
        ids: &wgpu::Buffer,
        table: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) {
        let index = dtype_index(dtype);
        let groups = grid(params.tokens as usize * params.hidden as usize, 256);
        rec.dispatch(&self.per_dtype[index], &params, &[ids, table, out], groups, 0.0);
    }
}
