//! Compute kernels: one Rust wrapper per WGSL file in `shaders/`, each with a typed
//! parameter struct, and the [`Recorder`] that turns a sequence of dispatches into one
//! command buffer.
//!
//! Every kernel binds its parameters at binding 0 as a uniform with a dynamic offset
//! into one per-batch arena, and its buffers at bindings 1.. . So a bind group depends
//! only on which buffers are bound; [`BindCache`] keeps them across batches, and a
//! forward pass allocates nothing per dispatch.

pub mod attention;
pub mod attention_check;
pub mod checks;
pub mod coop;
pub mod embedding;
pub mod last_token;
pub mod matmul;
pub mod norm;
pub mod rotary;

use super::errors::capture;
use anyhow::{Result, anyhow};
use bytemuck::Pod;
use std::collections::HashMap;

/// How a kernel uses one of its storage buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// A compiled compute pipeline and the bind group layout it was compiled against.
pub struct Kernel {
    pub name: &'static str,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    params_size: u64,
}

impl Kernel {
    /// Compiles `source`'s `main` with the given `override` constants. Binding 0 is a
    /// uniform of `params_size` bytes; `buffers[i]` describes binding `i + 1`. A shader the
    /// validator or the driver refuses is an error, not a panic.
    pub fn new(
        device: &wgpu::Device,
        name: &'static str,
        source: &str,
        constants: &[(&str, f64)],
        params_size: u64,
        buffers: &[Access],
    ) -> Result<Self> {
        // Every call below reports its errors through wgpu's error scopes.
        capture(
            device,
            || format!("compiling the {name} kernel"),
            || {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: wgpu::BufferSize::new(params_size),
                    },
                    count: None,
                }];
                for (i, access) in buffers.iter().enumerate() {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: i as u32 + 1,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: *access == Access::Read },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(name),
                    entries: &entries,
                });
                let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(name),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                });
                let descriptor =
                    wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(source.into()) };
                // SAFETY: by default only wgpu's loop counter is left out (see `checks`): every loop
                // in our shaders ends, which `checks::tests::every_shader_loop_ends` enforces.
                // `STEERLM_SHADER_CHECKS=none` (measurement only) also drops the index clamps: our
                // indices stay inside their arrays by construction, which the kernel tests check
                // against the CPU on every variant.
                let module = unsafe { device.create_shader_module_trusted(descriptor, checks::runtime_checks()) };
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
                    cache: None,
                });
                Kernel { name, pipeline, layout, params_size }
            },
        )
    }
}

/// `body` with `prelude` (declarations shared by a family of shaders) inserted after its
/// directives (`enable`, `diagnostic`, `requires`), which WGSL wants before any declaration.
pub fn with_prelude(prelude: &str, body: &str) -> String {
    let lines: Vec<&str> = body.lines().collect();
    let directives = ["enable ", "diagnostic(", "requires "];
    let after = lines.iter().rposition(|l| directives.iter().any(|d| l.starts_with(d))).map_or(0, |i| i + 1);
    format!("{}\n{prelude}\n{}\n", lines[..after].join("\n"), lines[after..].join("\n"))
}

/// The meaning of an on/off environment variable `name` set to `value`: unset, empty or
/// `0` is off, `1` on; anything else is an error saying so (shown in the plan's reason,
/// and then off).
pub fn switch(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value.map(str::trim) {
        None | Some("" | "0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(format!("{name}={other:?} is not 0 or 1")),
    }
}

/// A shader written with `alias Out = f32;` and `const HALF_OUT: bool = false;` (its output
/// type, and whether to saturate to f16's range before storing) made to store f16 for a
/// matmul that reads f16 x, with f16 enabled.
pub fn with_f16_output(shader: &str) -> String {
    const OUT: &str = "alias Out = f32;";
    const HALF: &str = "const HALF_OUT: bool = false;";
    debug_assert_eq!(shader.matches(OUT).count(), 1);
    debug_assert_eq!(shader.matches(HALF).count(), 1);
    let shader = shader.replace(OUT, "alias Out = f16;").replace(HALF, "const HALF_OUT: bool = true;");
    if shader.lines().any(|line| line.trim() == "enable f16;") { shader } else { format!("enable f16;\n{shader}") }
}

/// Pipelines compiled per weight dtype are kept in this order: the shaders' `DTYPE`
/// constant (0 f32, 1 bf16, 2 f16).
pub fn dtype_index(dtype: crate::weights::DType) -> usize {
    use crate::weights::DType;
    match dtype {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
    }
}

/// Workgroup counts for `count` invocations of `size`, spread over two dimensions when
/// one would pass the 65535 limit (shaders rebuild the index from both).
pub fn grid(count: usize, size: usize) -> [u32; 3] {
    let groups = count.div_ceil(size).max(1);
    if groups <= 65535 { [groups as u32, 1, 1] } else { [65535, groups.div_ceil(65535) as u32, 1] }
}

/// One recorded dispatch.
struct Dispatch<'k> {
    kernel: &'k Kernel,
    params_offset: u32,
    buffers: Vec<wgpu::Buffer>,
    groups: [u32; 3],
    /// Floating-point operations, for `--profile`'s TFLOP/s.
    flops: f64,
}

/// Bind groups by (layout, bound buffers), kept as long as the buffers they bind.
#[derive(Default)]
pub struct BindCache {
    groups: HashMap<(wgpu::BindGroupLayout, Vec<wgpu::Buffer>), wgpu::BindGroup>,
    /// Uniform buffer the parameters of a batch are written to.
    arena: Option<wgpu::Buffer>,
}

/// The dispatches of one submission, in order.
pub struct Recorder<'k> {
    params: Vec<u8>,
    alignment: usize,
    dispatches: Vec<Dispatch<'k>>,
}

/// Per-kernel GPU time of one submission (see [`Recorder::encode`]).
#[derive(Clone, Debug, Default)]
pub struct KernelTimes {
    /// (kernel name, dispatches, seconds, floating-point operations), in first-use order.
    pub kernels: Vec<(&'static str, usize, f64, f64)>,
}

impl KernelTimes {
    /// Kernels by total time: dispatches, milliseconds, share of GPU time and TFLOP/s.
    pub fn table(&self) -> String {
        let total: f64 = self.kernels.iter().map(|k| k.2).sum();
        let mut rows = self.kernels.clone();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut out =
            format!("{:<16} {:>10} {:>12} {:>7} {:>9}\n", "kernel", "dispatches", "GPU ms", "share", "TFLOP/s");
        for (name, count, seconds, flops) in rows {
            let rate = if flops > 0.0 && seconds > 0.0 { format!("{:.4}", flops / seconds / 1e12) } else { "-".into() };
            let share = if total > 0.0 { 100.0 * seconds / total } else { 0.0 };
            out += &format!("{name:<16} {count:>10} {:>12.3} {share:>6.1}% {rate:>9}\n", seconds * 1e3);
        }
        out += &format!("{:<16} {:>10} {:>12.3}\n", "total", "", total * 1e3);
        out
    }

    pub fn add(&mut self, other: &KernelTimes) {
        for &(name, count, seconds, flops) in &other.kernels {
            match self.kernels.iter_mut().find(|k| k.0 == name) {
                Some(k) => {
                    k.1 += count;
                    k.2 += seconds;
                    k.3 += flops;
                }
                None => self.kernels.push((name, count, seconds, flops)),
            }
        }
    }
}

impl<'k> Recorder<'k> {
    pub fn new(device: &wgpu::Device) -> Self {
        let alignment = device.limits().min_uniform_buffer_offset_alignment as usize;
        Recorder { params: Vec::new(), alignment, dispatches: Vec::new() }
    }

    /// Records `kernel` over `groups` workgroups with `params` at binding 0 and
    /// `buffers` at bindings 1.. .
    pub fn dispatch<P: Pod>(
        &mut self,
        kernel: &'k Kernel,
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
        flops: f64,
    ) {
        debug_assert_eq!(std::mem::size_of::<P>() as u64, kernel.params_size, "{} params", kernel.name);
        let offset = self.params.len();
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        self.params.resize(offset + (std::mem::size_of::<P>()).next_multiple_of(self.alignment), 0);
        self.dispatches.push(Dispatch {
            kernel,
            params_offset: offset as u32,
            buffers: buffers.iter().map(|&b| b.clone()).collect(),
            groups,
            flops,
        });
    }

    /// Writes the parameters and encodes every dispatch into `encoder`: in one compute
    /// pass, or with `timestamps`, one pass per dispatch bracketed by timestamp queries
    /// (resolved into the returned buffer, read with [`Timestamps::read`]).
    pub fn encode(
        self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        cache: &mut BindCache,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: bool,
    ) -> Result<Option<Timestamps>> {
        let needed = self.params.len().max(self.alignment) as u64;
        if cache.arena.as_ref().is_none_or(|a| a.size() < needed) {
            // Bind groups name the arena: all of them go with the old one.
            cache.groups.clear();
            cache.arena = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel parameters"),
                size: needed.next_power_of_two(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let arena = cache.arena.clone().expect("arena just made");
        queue.write_buffer(&arena, 0, &self.params);
        for d in &self.dispatches {
            let key = (d.kernel.layout.clone(), d.buffers.clone());
            cache.groups.entry(key).or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &arena,
                        offset: 0,
                        size: wgpu::BufferSize::new(d.kernel.params_size),
                    }),
                }];
                for (i, buffer) in d.buffers.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: buffer.as_entire_binding() });
                }
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(d.kernel.name),
                    layout: &d.kernel.layout,
                    entries: &entries,
                })
            });
        }
        let bind_group = |d: &Dispatch| &cache.groups[&(d.kernel.layout.clone(), d.buffers.clone())];
        if !timestamps {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
            for d in &self.dispatches {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, bind_group(d), &[d.params_offset]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
            return Ok(None);
        }
        let count = self.dispatches.len() as u32 * 2;
        if count > wgpu::QUERY_SET_MAX_QUERIES {
            return Err(anyhow!("--profile can time at most {} dispatches per pass", wgpu::QUERY_SET_MAX_QUERIES / 2));
        }
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        for (i, d) in self.dispatches.iter().enumerate() {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.kernel.name),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            pass.set_pipeline(&d.kernel.pipeline);
            pass.set_bind_group(0, bind_group(d), &[d.params_offset]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
        let resolved = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: count as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: count as u64 * 8,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, &readback, 0, readback.size());
        let kernels = self.dispatches.iter().map(|d| (d.kernel.name, d.flops)).collect();
        Ok(Some(Timestamps { readback, kernels }))
    }
}

/// Timestamp queries of a profiled submission, to read once it has run.
pub struct Timestamps {
    readback: wgpu::Buffer,
    kernels: Vec<(&'static str, f64)>,
}

impl Timestamps {
    /// Per-kernel totals; call after the submission's work is done.
    pub fn read(self, device: &wgpu::Device, queue: &wgpu::Queue) -> Result<KernelTimes> {
        let ticks: Vec<u64> = bytemuck::cast_slice(&read_buffer(device, &self.readback)?).to_vec();
        let period = queue.get_timestamp_period() as f64 * 1e-9;
        let mut times = KernelTimes::default();
        for (i, &(name, flops)) in self.kernels.iter().enumerate() {
            let seconds = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            times.add(&KernelTimes { kernels: vec![(name, 1, seconds, flops)] });
        }
        Ok(times)
    }
}

/// Maps a `MAP_READ` buffer and copies it out, waiting for the GPU.
pub fn read_buffer(device: &wgpu::Device, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
    let slice = buffer.slice(..);
    let (sender, receiver) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
    receiver
        .recv()
        .map_err(|_| anyhow!("the GPU never answered"))?
        .map_err(|e| anyhow!("reading a buffer back from the GPU: {e}"))?;
    let bytes = slice.get_mapped_range().map_err(|e| anyhow!("reading a buffer back from the GPU: {e}"))?.to_vec();
    buffer.unmap();
    Ok(bytes)
}

#[cfg(test)]
/// Parses and validates `source` with naga as wgpu would with `capabilities`, fills in
/// the override `constants` and writes SPIR-V (returned), so a shader error shows without
/// a device.
pub(crate) fn validate_wgsl(
    name: &str,
    source: &str,
    capabilities: wgpu::naga::valid::Capabilities,
    constants: &[(&str, f64)],
) -> Vec<u32> {
    let module = wgpu::naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(source)));
    let mut validator = wgpu::naga::valid::Validator::new(wgpu::naga::valid::ValidationFlags::all(), capabilities);
    let info =
        validator.validate(&module).unwrap_or_else(|e| panic!("{name} is invalid:\n{}", e.emit_to_string(source)));
    let constants: wgpu::naga::back::PipelineConstants = constants.iter().map(|&(k, v)| (k.to_owned(), v)).collect();
    let (module, info) = wgpu::naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
        .unwrap_or_else(|e| panic!("{name} with {constants:?}: {e}"));
    let options = wgpu::naga::back::spv::Options { lang_version: (1, 6), ..Default::default() };
    let pipeline = wgpu::naga::back::spv::PipelineOptions {
        shader_stage: wgpu::naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    wgpu::naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
        .unwrap_or_else(|e| panic!("{name} with {constants:?} does not compile to SPIR-V: {e}"))
}
