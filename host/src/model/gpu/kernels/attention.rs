//! Causal attention with grouped KV heads over packed sequences (`shaders/attention.wgsl`).

use super::{Access, Kernel, Recorder, grid};
use anyhow::Result;
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AttentionParams {
    /// Query rows.
    pub rows: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// One workgroup per (query row, head); each row attends to its own key range.
pub struct RowAttention {
    kernel: Kernel,
}

impl RowAttention {
    pub fn new(device: &wgpu::Device) -> Result<Self> {
        let kernel = Kernel::new(
            device,
            "attention",
            include_str!("../../../../../shaders/attention.wgsl"),
            &[],
            std::mem::size_of::<AttentionParams>() as u64,
            &[Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite],
        )?;
        Ok(RowAttention { kernel })
    }

    /// `out[r] = softmax(q[r] k[range]^T * scale) v[range]` per head, where
    /// `key_ranges[r] = (first key, one past the last)`. `keys` is the number of key
    /// rows each query row sees in total (for the FLOP count).
    #[allow(clippy::too_many_arguments)]
    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: AttentionParams,
        q: &wgpu::Buffer,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        key_ranges: &wgpu::Buffer,
        out: &wgpu::Buffer,
        keys: usize,
    ) {
        let flops = 4.0 * keys as f64 * params.heads as f64 * params.head_dim as f64;
        let groups = grid(params.rows as usize * params.heads as usize, 1);
        rec.dispatch(&self.kernel, &params, &[q, k, v, key_ranges, out], groups, flops);
    }
}
