//! `cargo bench -p steerlm-model --bench reward_model`
//!
//! A SmolLM2-135M-shaped Llama reward model (hidden 576, 30 layers, 9 heads, 3 KV
//! heads, MLP 1536, vocab 32000, 9 labels) with random bf16 weights, written by this
//! bench as a real safetensors checkpoint. Reports tokens/s for 8 texts of 512 tokens
//! and 64 texts of 128 tokens on the CPU path and the wgpu path, the GFLOP/s of the
//! register-blocked and tiled matmul kernels at 512x576x1536 and 2048x8192x2048, and the
//! CPU GEMM at 512x576x1536.
//!
//! On a software adapter (lavapipe) one wgpu forward pass of 4096 tokens takes minutes;
//! `STEERLM_BENCH_WGPU=0` skips the wgpu forward passes.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use steerlm_model::config::ModelConfig;
use steerlm_model::layout::ModelTensors;
use steerlm_model::weights::Weights;
use steerlm_model::{Batch, cpu, gpu};

const CONFIG: &str = r#"{
  "architectures": ["LlamaForSequenceClassification"],
  "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
  "intermediate_size": 1536, "vocab_size": 32000, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048,
  "rope_theta": 10000.0, "torch_dtype": "bfloat16",
  "id2label": {"0": "quality", "1": "toxicity", "2": "humor", "3": "creativity", "4": "helpfulness",
               "5": "correctness", "6": "coherence", "7": "complexity", "8": "verbosity"}
}"#;

struct Lcg(u64);
impl Lcg {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// Writes config.json and a bf16 model.safetensors with N(0, ~0.03)-ish random weights.
fn write_checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    let config = ModelConfig::from_json(&serde_json::from_str(CONFIG).unwrap()).unwrap();
    let (h, f, hd) = (config.hidden_size, config.intermediate_size, config.head_dim);
    let mut shapes: Vec<(String, Vec<usize>, f32)> = vec![
        ("model.embed_tokens.weight".into(), vec![config.vocab_size, h], 0.1),
        ("model.norm.weight".into(), vec![h], 0.0),
        ("score.weight".into(), vec![9, h], 0.1),
    ];
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h], 0.0));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![h], 0.0));
        shapes.push((format!("{p}.self_attn.q_proj.weight"), vec![config.num_heads * hd, h], 0.05));
        shapes.push((format!("{p}.self_attn.k_proj.weight"), vec![config.num_kv_heads * hd, h], 0.05));
        shapes.push((format!("{p}.self_attn.v_proj.weight"), vec![config.num_kv_heads * hd, h], 0.05));
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![h, config.num_heads * hd], 0.05));
        shapes.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h], 0.05));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![f, h], 0.05));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, f], 0.05));
    }
    let mut rng = Lcg(135);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape, scale)| {
            let count: usize = shape.iter().product();
            let bytes = (0..count)
                .flat_map(|_| {
                    // Norm weights are 1; everything else uniform noise.
                    let v = if scale == 0.0 { 1.0 } else { rng.uniform() * 2.0 * scale };
                    half::bf16::from_f32(v).to_bits().to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: HashMap<String, safetensors::tensor::TensorView> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(&views, None, &dir.join("model.safetensors")).unwrap();
}

fn batch(texts: usize, tokens: usize, seed: u64) -> Batch {
    let mut rng = Lcg(seed);
    let sequences: Vec<Vec<u32>> =
        (0..texts).map(|_| (0..tokens).map(|_| ((rng.uniform() + 0.5) * 31990.0) as u32 + 3).collect()).collect();
    Batch::pack(&sequences)
}

fn main() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-reward-model");
    if !dir.join("model.safetensors").exists() {
        eprintln!("writing a random SmolLM2-135M-shaped checkpoint to {} ...", dir.display());
        write_checkpoint(&dir);
    }
    let config = ModelConfig::load(&dir).unwrap();
    let weights = Weights::open(&dir).unwrap();
    let tensors = ModelTensors::locate(&config, &weights).unwrap();
    let cpu_model = cpu::CpuModel::new(&config, &tensors).unwrap();
    let with_wgpu = std::env::var("STEERLM_BENCH_WGPU").map_or(true, |v| v != "0");

    println!(
        "SmolLM2-135M-shaped Llama reward model, bf16 weights, f32 compute, {} CPU threads",
        rayon::current_num_threads()
    );
    println!("{:<44} {:>10} {:>12}", "case", "seconds", "tokens/s");
    for (texts, tokens) in [(8, 512), (64, 128)] {
        let b = batch(texts, tokens, (texts * tokens) as u64);
        let total = (texts * tokens) as f64;
        cpu_model.forward(&b).unwrap(); // warm-up
        let runs = 3;
        let started = Instant::now();
        for _ in 0..runs {
            cpu_model.forward(&b).unwrap();
        }
        let seconds = started.elapsed().as_secs_f64() / runs as f64;
        let largest = cpu_model.forward(&b).unwrap().iter().flatten().map(|v| v.abs()).fold(0f32, f32::max);
        println!(
            "{:<44} {seconds:>10.3} {:>12.0}   (largest |score| {largest:.1e})",
            format!("cpu, {texts} texts x {tokens} tokens"),
            total / seconds
        );
    }
    if with_wgpu {
        wgpu_plans(&config, &tensors, &cpu_model);
    }

    // The matmul kernels alone: register-blocked next to the tiled kernel with the tile
    // this adapter gets, at the MLP shape and at a big one (one dispatch: ~20 s on
    // lavapipe; STEERLM_BENCH_BIG_MATMUL=0 skips it).
    {
        use gpu::kernels::matmul::{Activations, MatmulVariant, TileConfig, time_variant};
        let adapter = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
        let tile = TileConfig::for_adapter(&adapter.info, &adapter.caps.limits);
        drop(adapter);
        let mut shapes = vec![(512, 576, 1536, 5)];
        if std::env::var("STEERLM_BENCH_BIG_MATMUL").map_or(true, |v| v != "0") {
            shapes.push((2048, 8192, 2048, 1));
        }
        for (m, k, n, iterations) in shapes {
            let flops = 2.0 * (m * n * k) as f64;
            let mut gflops = Vec::new();
            for (variant, full_checks) in [
                (MatmulVariant::RegisterBlocked, true),
                (MatmulVariant::RegisterBlocked, false),
                (MatmulVariant::Tiled(tile), true),
                (MatmulVariant::Tiled(tile), false),
            ] {
                set_full_checks(full_checks);
                let (seconds, adapter) = time_variant(variant, Activations::F32, (m, n, k), iterations).unwrap();
                gflops.push(flops / seconds / 1e9);
                println!(
                    "matmul {m}x{k}x{n} {:<28} {:<18} on {adapter}: {:.2} GFLOP/s",
                    variant.describe(),
                    if full_checks { "(wgpu loop counter)" } else { "" },
                    gflops.last().unwrap()
                );
            }
            set_full_checks(false);
            println!(
                "matmul {m}x{k}x{n} without / with wgpu's loop counter: register-blocked {:.2}x, tiled {:.2}x",
                gflops[1] / gflops[0],
                gflops[3] / gflops[2]
            );
            println!("matmul {m}x{k}x{n} tiled / register-blocked: {:.2}x", gflops[3] / gflops[1]);
        }
    }
    let (m, k, n) = (512, 576, 1536);
    let flops = 2.0 * (m * n * k) as f64;
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32).collect();
    let mut y = vec![0f32; m * n];
    let started = Instant::now();
    let runs = 20;
    for _ in 0..runs {
        // SAFETY: plain row-major buffers of the stated sizes.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64() / runs as f64;
    println!("CPU gemm {m}x{k}x{n} (same shape, baseline): {:.2} GFLOP/s", flops / seconds / 1e9);
}

/// The whole model on wgpu under the kernels of before this change (register-blocked
/// matmul, one workgroup per token and head for attention) and under the plan this
/// adapter gets, in one run, on the same batch. A software adapter gets 8 texts x 128
/// tokens (minutes otherwise); a hardware GPU 64 x 512.
fn wgpu_plans(config: &ModelConfig, tensors: &ModelTensors, cpu_model: &cpu::CpuModel) {
    use gpu::device::AttentionVariant;
    use gpu::kernels::matmul::MatmulVariant;
    let probe = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
    let software = probe.info.device_type == wgpu::DeviceType::Cpu;
    let chosen = gpu::KernelPlan::choose(&probe.info, &probe.caps, steerlm_model::Precision::Auto);
    drop(probe);
    let baseline = gpu::KernelPlan {
        matmul: MatmulVariant::RegisterBlocked,
        attention: AttentionVariant::Rows,
        f16_weights: false,
        f16_activations: false,
        ..chosen.clone()
    };
    let (texts, tokens) = if software { (8, 128) } else { (64, 512) };
    let b = batch(texts, tokens, 7);
    let reference = cpu_model.forward(&b).unwrap();
    let mut rates = Vec::new();
    // The plan once more compiled with wgpu's loop counter (see kernels::checks): the
    // baseline for leaving it out.
    for (label, plan, full_checks) in [
        ("before (register-blocked, rows)", baseline, false),
        ("this adapter's plan, wgpu loop counter", chosen.clone(), true),
        ("this adapter's plan", chosen, false),
    ] {
        set_full_checks(full_checks);
        let adapter = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
        let model = gpu::GpuModel::with_options(config, tensors, adapter, plan, None).unwrap();
        model.forward(&batch(2, 16, 1)).unwrap(); // warm-up: first-use costs
        let started = Instant::now();
        let scores = model.forward(&b).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let diff =
            scores.iter().flatten().zip(reference.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let rate = (texts * tokens) as f64 / seconds;
        rates.push(rate);
        println!(
            "{:<44} {seconds:>10.3} {rate:>12.1}   (max |wgpu - cpu| {diff:.1e})",
            format!("wgpu {label}, {texts} x {tokens}")
        );
        println!("    {}", model.adapter_name());
    }
    println!("wgpu whole model, this adapter's plan / before: {:.2}x", rates[2] / rates[0]);
    println!("wgpu whole model, without / with wgpu's loop counter: {:.2}x", rates[2] / rates[1]);
}

/// Kernels compiled from now on keep wgpu's loop counter (`full`) or leave it out (the
/// default), for comparing the two in one run.
fn set_full_checks(full: bool) {
    use gpu::kernels::checks::{ShaderChecks, set_checks};
    set_checks(if full { ShaderChecks::Full } else { ShaderChecks::Trusted });
}
