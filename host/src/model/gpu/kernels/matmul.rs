//! `y = x @ W^T (+ bias)`, then an epilogue, for the linear layers (`shaders/matmul*.wgsl`).
//! `x` is `[m, k]` f32; `W` is `[n, k]` in its stored dtype; `y` is f32 with row stride
//! `out_stride`, written from column `out_offset` (one row-slice of a split weight).

use super::{Access, Kernel, Recorder};
use crate::model::weights::DType;
use anyhow::Result;
use bytemuck::{Pod, Zeroable};

/// What the kernel does with each output value (bias included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Epilogue {
    /// `y = value`.
    Store = 0,
    /// `y += value`: the residual connection, without a pass of its own.
    Accumulate = 1,
    /// `y *= silu(value)`: the gate projection applied to the up projection in `y`.
    SiluGate = 2,
    /// `y = relu(value)^2`: Nemotron's MLP activation.
    SquaredRelu = 3,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub out_stride: u32,
    pub out_offset: u32,
    pub has_bias: u32,
    pub epilogue: u32,
    pub _pad: u32,
}

/// Which matmul shader runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulVariant {
    /// `matmul.wgsl`: 4x4 outputs per invocation straight from global memory. Fastest on
    /// software adapters, whose "workgroup memory" is ordinary memory.
    RegisterBlocked,
}

impl MatmulVariant {
    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::RegisterBlocked => "register-blocked",
        }
    }
}

/// One pipeline per weight dtype of the chosen variant.
pub struct Matmul {
    pub variant: MatmulVariant,
    per_dtype: [Kernel; 3],
    /// Output rows and columns one workgroup covers.
    tile: (usize, usize),
}

const BUFFERS: [Access; 4] = [Access::Read, Access::Read, Access::Read, Access::ReadWrite];

fn dtype_index(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
    }
}

impl Matmul {
    pub fn new(device: &wgpu::Device, variant: MatmulVariant) -> Result<Self> {
        let (name, source, tile) = match variant {
            MatmulVariant::RegisterBlocked => ("matmul", include_str!("../../../../../shaders/matmul.wgsl"), (32, 32)),
        };
        let size = std::mem::size_of::<MatmulParams>() as u64;
        let per_dtype = [
            Kernel::new(device, name, source, &[("DTYPE", 0.0)], size, &BUFFERS)?,
            Kernel::new(device, name, source, &[("DTYPE", 1.0)], size, &BUFFERS)?,
            Kernel::new(device, name, source, &[("DTYPE", 2.0)], size, &BUFFERS)?,
        ];
        Ok(Matmul { variant, per_dtype, tile })
    }

    /// Records `y[.., out_offset..out_offset + n] (epilogue)= x @ w^T (+ bias)`.
    #[allow(clippy::too_many_arguments)]
    pub fn record<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        params: MatmulParams,
        dtype: DType,
        x: &wgpu::Buffer,
        w: &wgpu::Buffer,
        bias: &wgpu::Buffer,
        y: &wgpu::Buffer,
    ) {
        let groups =
            [(params.n as usize).div_ceil(self.tile.1) as u32, (params.m as usize).div_ceil(self.tile.0) as u32, 1];
        let flops = 2.0 * params.m as f64 * params.n as f64 * params.k as f64;
        rec.dispatch(&self.per_dtype[dtype_index(dtype)], &params, &[x, w, bias, y], groups, flops);
    }
}

/// Times one matmul variant alone: `[m, k] @ [n, k]^T` with f32 weights, `iterations`
/// dispatches in one submission after a warm-up. Returns seconds per dispatch and the
/// adapter's name.
pub fn time_matmul(variant: MatmulVariant, m: usize, n: usize, k: usize, iterations: usize) -> Result<(f64, String)> {
    use super::{BindCache, read_buffer};
    use crate::model::gpu::{AdapterChoice, open_device};
    use wgpu::util::DeviceExt;
    let gpu = open_device(AdapterChoice::Any)?.expect("Any returns an adapter or an error");
    let device = &gpu.device;
    let matmul = Matmul::new(device, variant)?;
    let filled = |label: &str, floats: usize| {
        let values: Vec<f32> = (0..floats).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(&values),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
    };
    let (x, w, bias, y) = (filled("x", m * k), filled("w", n * k), filled("bias", n), filled("y", m * n));
    let done = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("done"),
        size: 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let params = MatmulParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        out_stride: n as u32,
        out_offset: 0,
        has_bias: 0,
        epilogue: Epilogue::Store as u32,
        _pad: 0,
    };
    let mut cache = BindCache::default();
    let mut run = |count: usize| -> Result<f64> {
        let mut rec = Recorder::new(device);
        for _ in 0..count {
            matmul.record(&mut rec, params, DType::F32, &x, &w, &bias, &y);
        }
        let started = std::time::Instant::now();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        rec.encode(device, &gpu.queue, &mut cache, &mut encoder, false)?;
        encoder.copy_buffer_to_buffer(&y, 0, &done, 0, 4);
        gpu.queue.submit([encoder.finish()]);
        read_buffer(device, &done)?;
        Ok(started.elapsed().as_secs_f64())
    };
    run(1)?; // warm-up: pipeline compilation and first-use costs
    Ok((run(iterations)? / iterations as f64, gpu.info.name.clone()))
}
