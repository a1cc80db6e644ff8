//! `gpu-info`: what wgpu sees, and which kernels `score` would run on it and why.

use super::Context;
use crate::model::Precision;
use crate::model::gpu::{AdapterChoice, KernelPlan, open_device};
use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct GpuInfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
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
    let plans: Vec<Value> = [Precision::Auto, Precision::F32]
        .into_iter()
        .map(|precision| {
            let plan = KernelPlan::choose(info, caps, precision);
            json!({
                "precision": format!("{precision:?}").to_lowercase(),
                "matmul": plan.matmul.name(),
                "matmul_reason": plan.matmul_reason,
                "attention": plan.attention.name(),
                "attention_reason": plan.attention_reason,
                "f16_weights": plan.f16_weights,
            })
        })
        .collect();
    let report = json!({
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
    if args.json {
        println!("{report:#}");
    } else {
        print!("{}", text(&report));
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
