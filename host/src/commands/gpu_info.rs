//! `gpu-info`: what wgpu sees, and which kernels `score` would run on it and why.

use super::Context;
use crate::model::Precision;
use crate::model::gpu::kernels::coop::TensorCores;
use crate::model::gpu::kernels::matmul::{
    Activations, CoopTile, LoopPart, MatmulVariant, TileConfig, time_loop_part, time_variant,
};
use crate::model::gpu::{AdapterChoice, Capabilities, KernelPlan, open_device};
use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct GpuInfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also time every matmul variant this adapter runs (f32 weights; f16 on tensor cores),
    /// at `--bench-shape`.
    #[arg(long)]
    bench: bool,
    /// The timed matmul, `MxNxK`: tokens x outputs x inputs (the default is Llama-3.2-1B's
    /// up projection over 4096 tokens; on a software adapter try 512x576x1536).
    #[arg(long, default_value = "4096x8192x2048", value_name = "MxNxK", value_parser = parse_shape)]
    bench_shape: (usize, usize, usize),
}

fn parse_shape(text: &str) -> Result<(usize, usize, usize), String> {
    let parts: Vec<usize> = text
        .split('x')
        .map(|p| p.trim().parse::<usize>().ok().filter(|&v| (1..=1 << 16).contains(&v)))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("`{text}`: want MxNxK, three whole numbers from 1 to 65536 (e.g. 4096x8192x2048)"))?;
    match parts[..] {
        [m, n, k] if k % 4 == 0 => Ok((m, n, k)),
        [_, _, _] => Err(format!("`{text}`: K must be a multiple of 4")),
        _ => Err(format!("`{text}`: want MxNxK, three whole numbers (e.g. 4096x8192x2048)")),
    }
}

/// The matmul variants this adapter runs, each with how its x is stored: f32 everywhere,
/// and also f16 for the wide tensor-core tiles (`STEERLM_F16_ACTIVATIONS`).
fn variants(info: &wgpu::AdapterInfo, caps: &Capabilities) -> Vec<(MatmulVariant, Activations)> {
    let tile = TileConfig::for_adapter(info, &caps.limits);
    let mut variants =
        vec![(MatmulVariant::RegisterBlocked, Activations::F32), (MatmulVariant::Tiled(tile), Activations::F32)];
    if let Some(cores) = TensorCores::of(info, caps) {
        for coop in CoopTile::all_for(cores, &caps.limits) {
            let variant = MatmulVariant::Cooperative { tile: coop, cores, fallback: tile };
            variants.push((variant, Activations::F32));
            if coop.is_wide() {
                variants.push((variant, Activations::F16));
            }
        }
    }
    variants
}

/// Each variant's time per dispatch at `(m, n, k)`, as JSON rows.
fn bench(info: &wgpu::AdapterInfo, caps: &Capabilities, (m, n, k): (usize, usize, usize)) -> Result<Vec<Value>> {
    let flops = 2.0 * m as f64 * n as f64 * k as f64;
    // Enough dispatches for timer noise to vanish on a GPU; one on a software adapter.
    let iterations = if info.device_type == wgpu::DeviceType::Cpu { 1 } else { 20 };
    let mut rows = Vec::new();
    let mut row = |name: String, seconds: f64| -> Result<()> {
        if !seconds.is_finite() || seconds <= 0.0 {
            bail!("timing {name} gave {seconds} s");
        }
        rows.push(json!({
            "variant": name,
            "shape": format!("{m}x{n}x{k}"),
            "ms": (seconds * 1e5).round() / 100.0,
            "gflops": (flops / seconds / 1e8).round() / 10.0,
        }));
        Ok(())
    };
    let variants = variants(info, caps);
    for &(variant, x_stored) in &variants {
        let (seconds, _) = time_variant(variant, x_stored, (m, n, k), iterations)?;
        let name = match x_stored {
            Activations::F32 => variant.describe(),
            Activations::F16 => format!("{}, x stored as f16", variant.describe()),
        };
        row(name, seconds)?;
    }
    // Where the default tensor-core tile's time goes: its main loop in parts, each adding
    // one to the last (the full kernel adds the global loads), at the same FLOP count.
    if let Some(&(variant @ MatmulVariant::Cooperative { tile, .. }, _)) =
        variants.iter().find(|(v, _)| matches!(v, MatmulVariant::Cooperative { .. }))
        && tile.has_loop_parts()
    {
        for part in LoopPart::ALL {
            let seconds = time_loop_part(variant, part, (m, n, k), iterations)?;
            row(format!("cooperative ({}) {}", tile.key(), part.describe()), seconds)?;
        }
    }
    Ok(rows)
}

pub fn run(_context: &Context, args: &GpuInfoArgs) -> Result<()> {
    let gpu = open_device(AdapterChoice::Any)?.expect("Any returns an adapter or an error");
    let (info, caps) = (&gpu.info, &gpu.caps);
    let limits = &caps.limits;
    let subgroups = caps.subgroups.then(|| json!({"min": info.subgroup_min_size, "max": info.subgroup_max_size}));
    let matrices: Vec<Value> = caps
        .cooperative_matrices
        .iter()
        .map(|p| {
            json!(format!(
                "{}x{}x{} {:?} x {:?} -> {:?}{}",
                p.m_size,
                p.n_size,
                p.k_size,
                p.ab_type,
                p.ab_type,
                p.cr_type,
                if p.saturating_accumulation { " (saturating)" } else { "" }
            ))
        })
        .collect();
    let mut precisions = vec![Precision::Auto, Precision::F32];
    if TensorCores::of(info, caps).is_some() {
        precisions.push(Precision::F16);
    }
    let plans: Vec<Value> = precisions
        .into_iter()
        .map(|precision| {
            let plan = KernelPlan::choose(info, caps, precision);
            json!({
                "precision": format!("{precision:?}").to_lowercase(),
                "matmul": plan.matmul.describe(),
                "matmul_reason": plan.matmul_reason,
                "attention": plan.attention.name(),
                "attention_reason": plan.attention_reason,
                "f16_weights": plan.f16_weights,
                "f16_activations": plan.f16_activations,
            })
        })
        .collect();
    let mut report = json!({
        "adapter": info.name,
        "backend": format!("{:?}", info.backend),
        "device_type": format!("{:?}", info.device_type),
        "driver": info.driver,
        "driver_info": info.driver_info,
        "limits": {
            "max_buffer_size": limits.max_buffer_size,
            "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
            "max_compute_workgroup_storage_size": limits.max_compute_workgroup_storage_size,
            "max_compute_invocations_per_workgroup": limits.max_compute_invocations_per_workgroup,
            "max_compute_workgroups_per_dimension": limits.max_compute_workgroups_per_dimension,
            "min_uniform_buffer_offset_alignment": limits.min_uniform_buffer_offset_alignment,
        },
        "features": {
            "shader_f16": caps.shader_f16,
            "subgroups": subgroups,
            "cooperative_matrices": matrices,
            "timestamp_queries": caps.timestamps,
        },
        "kernels": plans,
    });
    if args.bench {
        report["matmul_bench"] = Value::Array(bench(info, caps, args.bench_shape)?);
    }
    if args.json {
        crate::output::print(&format!("{report:#}\n"))?;
    } else {
        crate::output::print(&text(&report))?;
    }
    Ok(())
}

/// The report as indented `key: value` lines.
fn text(report: &Value) -> String {
    fn walk(out: &mut String, value: &Value, indent: usize) {
        let pad = "  ".repeat(indent);
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    let key = key.replace('_', " ");
                    match value {
                        Value::Object(_) | Value::Array(_) if !is_empty(value) => {
                            out.push_str(&format!("{pad}{key}:\n"));
                            walk(out, value, indent + 1);
                        }
                        _ => out.push_str(&format!("{pad}{key}: {}\n", scalar(value))),
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::Object(_) => {
                            out.push_str(&format!("{pad}-\n"));
                            walk(out, item, indent + 1);
                        }
                        _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                    }
                }
            }
            _ => out.push_str(&format!("{pad}{}\n", scalar(value))),
        }
    }
    fn is_empty(value: &Value) -> bool {
        match value {
            Value::Array(items) => items.is_empty(),
            Value::Object(map) => map.is_empty(),
            _ => false,
        }
    }
    fn scalar(value: &Value) -> String {
        match value {
            Value::String(s) if s.is_empty() => "(none)".into(),
            Value::String(s) => s.clone(),
            Value::Null => "no".into(),
            Value::Bool(true) => "yes".into(),
            Value::Bool(false) => "no".into(),
            Value::Array(items) if items.is_empty() => "none".into(),
            Value::Object(map) if map.is_empty() => "none".into(),
            Value::Object(map) => map.iter().map(|(k, v)| format!("{k} {}", scalar(v))).collect::<Vec<_>>().join(", "),
            other => other.to_string(),
        }
    }
    let mut out = String::new();
    walk(&mut out, report, 0);
    out
}
