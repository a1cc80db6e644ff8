//! Weights on the device: uploaded once, in their stored dtype (half types stay packed
//! two per u32 and are widened in the shaders), split by rows when a tensor is larger
//! than the adapter's storage-binding limit.

use super::kernels::matmul::f16_weights;
use crate::layout::{LinearTensors, NormTensors};
use crate::weights::{DType, TensorView};
use anyhow::{Result, bail};
use wgpu::util::DeviceExt;

/// A weight matrix `[rows, cols]` on the device, possibly in several row ranges.
pub struct DeviceTensor {
    pub dtype: DType,
    pub cols: usize,
    /// (first row, row count, buffer)
    pub parts: Vec<(usize, usize, wgpu::Buffer)>,
}

pub struct DeviceLinear {
    pub weight: DeviceTensor,
    pub bias: Option<wgpu::Buffer>,
    pub out_features: usize,
    pub in_features: usize,
}

pub struct DeviceNorm {
    pub weight: wgpu::Buffer,
    pub bias: Option<wgpu::Buffer>,
}

/// Uploads tensors, splitting those larger than one binding.
pub struct Uploader<'a> {
    pub device: &'a wgpu::Device,
    pub max_binding: usize,
    /// Convert linear weights to f16 (the tensor-core path).
    pub f16_linear: bool,
    /// Weights that stayed in their dtype because f16 cannot hold them, and why.
    pub kept_dtype: std::cell::RefCell<Vec<String>>,
}

impl Uploader<'_> {
    pub fn tensor(&self, view: &TensorView) -> Result<DeviceTensor> {
        self.matrix(view.dtype, &view.shape, &view.bytes)
    }

    fn matrix(&self, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<DeviceTensor> {
        let (rows, cols) = match shape {
            [rows, cols] => (*rows, *cols),
            other => bail!("expected a matrix, got shape {other:?}"),
        };
        let row_bytes = cols * dtype.size();
        if !row_bytes.is_multiple_of(4) {
            bail!("tensor rows of {cols} {dtype:?} values are not a whole number of 32-bit words");
        }
        let rows_per_part = (self.max_binding / row_bytes).max(1);
        let mut parts = Vec::new();
        let mut row = 0;
        while row < rows {
            let count = rows_per_part.min(rows - row);
            let bytes = &bytes[row * row_bytes..(row + count) * row_bytes];
            let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("weight"),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE,
            });
            parts.push((row, count, buffer));
            row += count;
        }
        Ok(DeviceTensor { dtype, cols, parts })
    }

    pub fn linear(&self, t: &LinearTensors) -> Result<DeviceLinear> {
        let w = &t.weight;
        let weight = match self.f16_linear.then(|| f16_weights(w.name, w.dtype, &w.bytes)) {
            Some(Ok(halves)) => self.matrix(DType::F16, &w.shape, &halves)?,
            Some(Err(why)) => {
                self.kept_dtype.borrow_mut().push(format!("{why:#}"));
                self.tensor(w)?
            }
            None => self.tensor(w)?,
        };
        debug_assert_eq!(weight.cols, t.in_features);
        Ok(DeviceLinear {
            weight,
            bias: t.bias.as_ref().map(|b| self.f32_buffer("bias", &b.to_f32())),
            out_features: t.out_features,
            in_features: t.in_features,
        })
    }

    pub fn norm(&self, t: &NormTensors) -> DeviceNorm {
        DeviceNorm {
            weight: self.f32_buffer("norm weight", &t.multiplier()),
            bias: t.bias.as_ref().map(|b| self.f32_buffer("norm bias", &b.to_f32())),
        }
    }

    pub fn f32_buffer(&self, label: &str, values: &[f32]) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(values),
            usage: wgpu::BufferUsages::STORAGE,
        })
    }
}
