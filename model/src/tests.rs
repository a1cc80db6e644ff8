//! The model against Hugging Face transformers' goldens (tests/fixtures/models): token
//! ids exactly, scores within `1e-4 + 1e-4 * |golden|`, single texts and one packed batch.

use super::{Device, LoadOptions, Precision, RewardModel};
use serde_json::Value;
use std::path::PathBuf;

/// The fixtures. `windows/*` and `rope/*` are some of them with one config.json change
/// (their weights and tokenizers are links to the models' own): sliding windows of a few
/// tokens, on every layer (Mistral), from `max_window_layers` on (Qwen2) and on the even
/// layers (Gemma2), so that most texts run past them; Llama 3.1's `llama3` RoPE scaling
/// (transformers 4.x form), `linear` and `yarn` (5.x form).
pub const MODELS: [&str; 17] = [
    "llama9",
    "llama9-bf16",
    "nemotron5",
    "qwen9",
    "qwen3-9",
    "mistral5",
    "llama-causal",
    "qwen2-causal-tied",
    "gemma-5",
    "gemma2-9",
    "gemma2-causal-tied",
    "windows/mistral5",
    "windows/qwen9",
    "windows/gemma2-9",
    "rope/llama9-llama3",
    "rope/qwen9-linear",
    "rope/qwen9-yarn",
];

/// The fixtures with a chat template, and their `chat_cases`.
const CHAT_MODELS: [&str; 3] = ["llama-causal", "qwen2-causal-tied", "qwen3-9"];

/// The `*ForCausalLM` fixtures: rewards are logits of chosen vocabulary ids.
const CAUSAL_MODELS: [&str; 3] = ["llama-causal", "qwen2-causal-tied", "gemma2-causal-tied"];

pub fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name)
}

pub fn goldens(name: &str) -> Value {
    let text = std::fs::read_to_string(model_dir(name).join("goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[track_caller]
pub fn assert_close(ours: &[f32], golden: &[f32], what: &str) {
    assert_eq!(ours.len(), golden.len(), "{what}: number of scores");
    for (i, (a, b)) in ours.iter().zip(golden).enumerate() {
        let tolerance = 1e-4 + 1e-4 * b.abs();
        assert!(
            (a - b).abs() <= tolerance,
            "{what}: score {i}: ours {a}, golden {b}, |diff| {} > {tolerance}",
            (a - b).abs()
        );
    }
}

/// Every case alone, then all of them in one packed batch.
pub fn check_model(name: &str, device: Device) {
    let model = RewardModel::load(
        &model_dir(name),
        LoadOptions { device, add_bos: false, precision: Precision::F32, reward_token_ids: None },
    )
    .unwrap();
    let goldens = goldens(name);
    let cases = goldens["cases"].as_array().unwrap();
    let mut sequences = Vec::new();
    for case in cases {
        let case_name = case["name"].as_str().unwrap();
        let tokens = model.tokenize(case["text"].as_str().unwrap()).unwrap();
        let golden_ids: Vec<u32> =
            case["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tokens.ids, golden_ids, "{name}/{case_name}: token ids");
        assert!(!tokens.exceeded);
        let scores = model.score(std::slice::from_ref(&tokens.ids)).unwrap();
        assert_close(&scores[0], &floats(&case["scores"]), &format!("{name}/{case_name} on {device:?}"));
        sequences.push(tokens.ids);
    }
    let batched = model.score(&sequences).unwrap();
    for (case, scores) in cases.iter().zip(&batched) {
        assert_close(scores, &floats(&case["scores"]), &format!("{name}/{} batched on {device:?}", case["name"]));
    }
}

#[test]
fn cpu_matches_transformers() {
    for name in MODELS {
        check_model(name, Device::Cpu);
    }
}

/// Dynamic NTK RoPE scaling (`rope_scaling: {"rope_type": "dynamic"}`) leaves the
/// rotation alone for sequences within max_position_embeddings: transformers' base is
/// `theta * (factor * len / max - (factor - 1)) ^ (d / (d - 2))` with `len` raised to
/// max, i.e. `theta`; and steerlm cuts texts to max_position_embeddings. So llama9 with
/// it scores llama9's goldens.
#[test]
fn dynamic_rope_scaling_scores_as_plain_within_the_context() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(model_dir("llama9").join(file), dir.path().join(file)).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir("llama9").join("config.json")).unwrap()).unwrap();
    config["rope_scaling"] = serde_json::json!({"rope_type": "dynamic", "factor": 4.0});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let options =
        LoadOptions { device: Device::Cpu, add_bos: false, precision: Precision::F32, reward_token_ids: None };
    let model = RewardModel::load(dir.path(), options.clone()).unwrap();
    for case in goldens("llama9")["cases"].as_array().unwrap() {
        let tokens = model.tokenize(case["text"].as_str().unwrap()).unwrap();
        let scores = model.score(std::slice::from_ref(&tokens.ids)).unwrap();
        assert_close(&scores[0], &floats(&case["scores"]), &format!("dynamic/{}", case["name"]));
    }
    // Its factor is checked as transformers checks it.
    config["rope_scaling"] = serde_json::json!({"rope_type": "dynamic", "factor": 0});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let error = format!("{:#}", RewardModel::load(dir.path(), options).err().unwrap());
    assert!(error.contains("`rope_scaling.factor` must be a positive number"), "{error}");
}

/// The shaders against the goldens, on whatever adapter wgpu finds (lavapipe in CI).
#[test]
fn wgpu_matches_transformers() {
    for name in MODELS {
        check_model(name, Device::Wgpu);
    }
}

/// The tensor-core path (`--precision f16`: the tensor-core matmul and, with subgroups of
/// 32, tensor-core attention, on whatever fragment the adapter offers, lavapipe 26's 8x8x8
/// included) against the goldens within `F16_TOLERANCE`, on every fixture; where the
/// adapter has no f16 cooperative matrices it says it was skipped.
#[test]
fn wgpu_tensor_cores_match_transformers_within_the_f16_tolerance() {
    use super::{F16_TOLERANCE, gpu};
    let probe = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
    let Some(cores) = probe.tensor_cores() else {
        eprintln!("SKIPPED: tensor-core scores on {}: no f16 cooperative matrices", probe.info.name);
        return;
    };
    let plan = gpu::KernelPlan::choose(&probe.info, &probe.caps, Precision::F16);
    drop(probe);
    for name in MODELS {
        let options =
            LoadOptions { device: Device::Wgpu, add_bos: false, precision: Precision::F16, reward_token_ids: None };
        let model = RewardModel::load(&model_dir(name), options).unwrap();
        let kernels = model.device_name();
        // Nothing fell back: tensor-core attention wherever planned and the head size allows.
        let head_dim = model.config.head_dim;
        let coop_attention = matches!(plan.attention, gpu::device::AttentionVariant::FlashTensorCores(_))
            && gpu::kernels::attention::flash_coop_supports_head_dim(head_dim, cores.fragment);
        assert_eq!(kernels.contains("attention flash (tensor cores"), coop_attention, "{name}: {kernels}");
        let mut worst = 0f32;
        for case in goldens(name)["cases"].as_array().unwrap() {
            let ids = model.tokenize(case["text"].as_str().unwrap()).unwrap().ids;
            for (a, b) in model.score(&[ids]).unwrap()[0].iter().zip(floats(&case["scores"])) {
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("tensor cores ({cores}), {name}: max |score - golden| = {worst:.2e}; {kernels}");
        assert!(worst <= F16_TOLERANCE, "{name} on tensor cores: {worst} > {F16_TOLERANCE}");

        // f16 activations (STEERLM_F16_ACTIVATIONS=1): the very same scores, wherever the
        // norms are RMSNorms (Nemotron's LayerNorm1P stays f32, and the load says so).
        use super::{Batch, arch::NormKind, config::ModelConfig, layout::ModelTensors, weights::Weights};
        let (config, weights) =
            (ModelConfig::load(&model_dir(name)).unwrap(), Weights::open(&model_dir(name)).unwrap());
        let tensors = ModelTensors::locate(&config, &weights).unwrap();
        let mut half_plan = plan.clone();
        half_plan.request_f16_activations(Some("1"));
        let adapter = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
        let half = gpu::GpuModel::with_options(&config, &tensors, adapter, half_plan, None).unwrap();
        let kernels = half.adapter_name();
        let rms = config.architecture.norm() != NormKind::LayerNorm1P;
        // Every f16 writer engaged: the norms, the gate (all these models are gated) and
        // tensor-core flash attention where it runs.
        let writers = if coop_attention { "(norms, gate, attention)" } else { "(norms, gate)" };
        assert_eq!(kernels.contains(&format!("reading f16 activations {writers}")), rms, "{name}: {kernels}");
        assert_eq!(kernels.contains("f16 activations off: LayerNorm1P"), !rms, "{name}: {kernels}");
        let mut texts = 0;
        for case in goldens(name)["cases"].as_array().unwrap() {
            let ids = model.tokenize(case["text"].as_str().unwrap()).unwrap().ids;
            let want = model.score(std::slice::from_ref(&ids)).unwrap();
            let got = half.forward(&Batch::pack(&[ids])).unwrap();
            let bits = |scores: &[Vec<f32>]| scores.concat().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{name}: f16 activations changed the scores of {}", case["name"]);
            texts += 1;
        }
        eprintln!("tensor cores ({cores}), {name}, f16 activations: the same bits for all {texts} texts; {kernels}");
    }
}

/// `--precision f16` is refused where it cannot run: on the CPU, and on an adapter
/// without f16 cooperative matrices.
#[test]
fn precision_f16_is_refused_without_tensor_cores() {
    use super::gpu;
    let options = |device| LoadOptions { device, add_bos: false, precision: Precision::F16, reward_token_ids: None };
    let error = RewardModel::load(&model_dir("llama9"), options(Device::Cpu)).err().unwrap();
    assert!(format!("{error:#}").contains("--precision f16 runs on tensor cores"), "{error:#}");
    let probe = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
    if probe.tensor_cores().is_some() {
        eprintln!("SKIPPED: {} has f16 cooperative matrices; the refusal is not reachable here", probe.info.name);
        return;
    }
    let error = RewardModel::load(&model_dir("llama9"), options(Device::Wgpu)).err().unwrap();
    assert!(format!("{error:#}").contains("needs f16 cooperative matrices"), "{error:#}");
}

/// Weights split into many row parts (as a 13B model's embedding is on a 128 MiB
/// binding limit) give the same scores.
#[test]
fn wgpu_splits_tensors_larger_than_a_binding() {
    use super::{Batch, config::ModelConfig, gpu, layout::ModelTensors, weights::Weights};
    let dir = model_dir("llama9-bf16");
    let config = ModelConfig::load(&dir).unwrap();
    let weights = Weights::open(&dir).unwrap();
    let tensors = ModelTensors::locate(&config, &weights).unwrap();
    let adapter = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
    // 16 KiB parts: the 32000-row embedding becomes 250 parts, the MLP weights 2-3.
    let plan = gpu::KernelPlan::choose(&adapter.info, &adapter.caps, Precision::F32);
    let model = gpu::GpuModel::with_options(&config, &tensors, adapter, plan, Some(16 << 10)).unwrap();
    assert_eq!(model.embedding_parts(), 250);
    let goldens = goldens("llama9-bf16");
    let cases = &goldens["cases"].as_array().unwrap()[..4];
    let ids: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| c["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect();
    let scores = model.forward(&Batch::pack(&ids)).unwrap();
    for (case, scores) in cases.iter().zip(&scores) {
        assert_close(scores, &floats(&case["scores"]), &format!("split {}", case["name"]));
    }
}

#[test]
fn rope_frequencies_match_transformers_bit_for_bit() {
    for name in MODELS {
        let config = super::config::ModelConfig::load(&model_dir(name)).unwrap();
        let rope = &goldens(name)["rope"];
        let golden = floats(&rope["inv_freq_f32"]);
        assert_eq!(super::rope::inv_freq(config.rope_theta, config.rotary_dim, config.rope_scaling), golden, "{name}");
        // YaRN's factor on cos and sin (1 elsewhere), as transformers rounds it to f32.
        let attention = rope["attention_scaling"].as_f64().unwrap_or(1.0) as f32;
        assert_eq!(config.rope_scaling.attention_factor(), attention, "{name}");
    }
}

/// Llama 3.1's real settings (theta 500000, 128-wide heads, factor 8 over an original 8,192
/// tokens), where most of its 64 frequencies are blended or divided.
#[test]
fn llama31_rope_scaling_matches_transformers_bit_for_bit() {
    use super::rope::{RopeScaling, inv_freq};
    let real = &goldens("rope/llama9-llama3")["real_llama31"];
    let scaling = &real["rope_scaling"];
    let number = |name: &str| scaling[name].as_f64().unwrap();
    let scaling = RopeScaling::Llama3 {
        factor: number("factor"),
        low_freq_factor: number("low_freq_factor"),
        high_freq_factor: number("high_freq_factor"),
        original_context: number("original_max_position_embeddings"),
    };
    let theta = real["rope_theta"].as_f64().unwrap();
    let rotary_dim = real["rotary_dim"].as_u64().unwrap() as usize;
    let ours = inv_freq(theta, rotary_dim, scaling);
    assert_eq!(ours, floats(&real["inv_freq_f32"]));
    assert_ne!(ours, inv_freq(theta, rotary_dim, RopeScaling::None), "the scaling must change something");
}

#[test]
fn long_texts_are_truncated_and_flagged() {
    let dir = model_dir("llama9");
    let model =
        RewardModel::load(&dir, LoadOptions { device: Device::Cpu, add_bos: true, ..Default::default() }).unwrap();
    let text = "word ".repeat(5000);
    let tokens = model.tokenize(&text).unwrap();
    assert!(tokens.exceeded);
    assert_eq!(tokens.ids.len(), model.config.max_positions);
    assert_eq!(tokens.ids[0], 1, "--add-bos prepends <s>");
    assert_eq!(model.score(&[tokens.ids]).unwrap()[0].len(), 9);
}

#[test]
fn missing_tensors_and_bad_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let error = RewardModel::load(dir.path(), LoadOptions::default()).err().unwrap();
    assert!(format!("{error:#}").contains("config.json"), "{error:#}");
    // A checkpoint whose config asks for more layers than it holds.
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(model_dir("llama9").join(file), dir.path().join(file)).unwrap();
    }
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let error =
        RewardModel::load(dir.path(), LoadOptions { device: Device::Cpu, add_bos: false, ..Default::default() })
            .err()
            .unwrap();
    assert!(format!("{error:#}").contains("`num_hidden_layers` is 3, but the checkpoint has 2 layers"), "{error:#}");
}

/// llama9 with one config.json value replaced (the large files symlinked).
fn doctored_llama9(field: &str, value: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = model_dir("llama9");
    for file in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(source.join(file), dir.path().join(file)).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap()).unwrap();
    config[field] = value;
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// Hostile config.json values are errors naming the file and the field, never a panic
/// (division by zero) or an abort (a huge allocation sized by the config).
#[test]
fn hostile_config_values_are_named_not_panics() {
    use serde_json::json;
    let cases = [
        ("num_attention_heads", json!(0), "`num_attention_heads` must be at least 1"),
        ("num_key_value_heads", json!(0), "`num_key_value_heads` must be at least 1"),
        (
            "num_hidden_layers",
            json!(1_000_000_000_000u64),
            "`num_hidden_layers` is 1000000000000, but the checkpoint has 2 layers",
        ),
        ("num_hidden_layers", json!(1), "`num_hidden_layers` is 1, but the checkpoint has 2 layers"),
        ("max_position_embeddings", json!(1_000_000_000_000u64), "max_position_embeddings 1000000000000"),
        ("vocab_size", json!(32001), "`vocab_size` is 32001, but `model.embed_tokens.weight` has 32000"),
        ("hidden_size", json!(128), "`hidden_size` is 128, but `model.embed_tokens.weight` has 64"),
        (
            "head_dim",
            json!(32),
            "`num_attention_heads x head_dim` is 128, but `model.layers.0.self_attn.q_proj.weight` has 64",
        ),
        (
            "intermediate_size",
            json!(175),
            "`intermediate_size` is 175, but `model.layers.0.mlp.up_proj.weight` has 176",
        ),
        ("num_key_value_heads", json!(4), "`num_key_value_heads x head_dim` is 64, but"),
        ("id2label", json!({"0": "only"}), "score.weight has 9 outputs but config.json names 1 labels"),
    ];
    for (field, value, says) in cases {
        let dir = doctored_llama9(field, value.clone());
        let loaded = std::panic::catch_unwind(|| {
            RewardModel::load(dir.path(), LoadOptions { device: Device::Cpu, add_bos: false, ..Default::default() })
        });
        let error = match loaded {
            Ok(Ok(_)) => panic!("{field} = {value}: loaded"),
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => panic!("{field} = {value}: panicked"),
        };
        assert!(error.contains(says), "{field} = {value}: {error:?} does not say {says:?}");
        assert!(error.contains("config.json"), "{field} = {value}: {error:?} does not name config.json");
    }
}

/// Writes a random one-layer checkpoint shaped like SmolLM2-135M's layers (hidden 576,
/// 9 heads of 64, 3 KV heads, MLP 1536) with a small vocabulary.
fn write_random_checkpoint(dir: &std::path::Path) {
    use std::collections::HashMap;
    let config = r#"{"architectures": ["LlamaForSequenceClassification"], "hidden_size": 576, "num_hidden_layers": 1,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 1000,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "rope_theta": 10000.0, "num_labels": 3}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("model.embed_tokens.weight", vec![1000, 576]),
        ("model.norm.weight", vec![576]),
        ("score.weight", vec![3, 576]),
        ("model.layers.0.input_layernorm.weight", vec![576]),
        ("model.layers.0.post_attention_layernorm.weight", vec![576]),
        ("model.layers.0.self_attn.q_proj.weight", vec![576, 576]),
        ("model.layers.0.self_attn.k_proj.weight", vec![192, 576]),
        ("model.layers.0.self_attn.v_proj.weight", vec![192, 576]),
        ("model.layers.0.self_attn.o_proj.weight", vec![576, 576]),
        ("model.layers.0.mlp.gate_proj.weight", vec![1536, 576]),
        ("model.layers.0.mlp.up_proj.weight", vec![1536, 576]),
        ("model.layers.0.mlp.down_proj.weight", vec![576, 1536]),
    ];
    let mut state = 99u64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let count: usize = shape.iter().product();
            let bytes = (0..count)
                .flat_map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let v =
                        if shape.len() == 1 { 1.0 } else { ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2 };
                    v.to_le_bytes()
                })
                .collect();
            (name.to_owned(), shape, bytes)
        })
        .collect();
    let views: HashMap<String, safetensors::tensor::TensorView> = data
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(&views, None, &dir.join("model.safetensors")).unwrap();
}

/// Long sequences with 64-dimensional heads, under the chosen kernel plan, the tiled
/// matmul with flash attention, and the previous kernels (register-blocked, row attention): a first attention
/// kernel (one invocation per token and head, looping over every key) went wrong on
/// lavapipe from 500 keys on.
#[test]
fn wgpu_agrees_with_cpu_on_long_sequences_with_wide_heads() {
    use super::gpu::device::AttentionVariant;
    use super::gpu::kernels::matmul::{MatmulVariant, TileConfig};
    use super::{Batch, config::ModelConfig, cpu, gpu, layout::ModelTensors, weights::Weights};
    let dir = tempfile::tempdir().unwrap();
    write_random_checkpoint(dir.path());
    let config = ModelConfig::load(dir.path()).unwrap();
    let weights = Weights::open(dir.path()).unwrap();
    let tensors = ModelTensors::locate(&config, &weights).unwrap();
    let cpu_model = cpu::CpuModel::new(&config, &tensors).unwrap();
    let sequences: Vec<Vec<u32>> =
        [499u32, 500, 700].iter().map(|&n| (0..n).map(|i| (i * 7919) % 997 + 3).collect()).collect();
    let batch = Batch::pack(&sequences);
    let reference = cpu_model.forward(&batch).unwrap();
    let probe = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
    let chosen = gpu::KernelPlan::choose(&probe.info, &probe.caps, Precision::F32);
    drop(probe);
    let before =
        gpu::KernelPlan { matmul: MatmulVariant::RegisterBlocked, attention: AttentionVariant::Rows, ..chosen.clone() };
    let tiled = gpu::KernelPlan {
        matmul: MatmulVariant::Tiled(TileConfig::MEDIUM),
        attention: AttentionVariant::Flash,
        ..chosen.clone()
    };
    for plan in [chosen, tiled, before] {
        let adapter = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
        let what = format!("{} matmul, {} attention", plan.matmul.describe(), plan.attention.name());
        let gpu_model = gpu::GpuModel::with_options(&config, &tensors, adapter, plan, None).unwrap();
        let ours = gpu_model.forward(&batch).unwrap();
        for (i, (g, c)) in ours.iter().zip(&reference).enumerate() {
            assert_close(g, c, &format!("{what}: sequence {i} ({} tokens): wgpu vs cpu", sequences[i].len()));
        }
    }
}

/// A tensor-core plan on an adapter whose device cannot compile the kernel (lavapipe has
/// no cooperative matrices) loads anyway: the tiled f32 kernel runs, the load message says
/// why, and the scores are the goldens'.
#[test]
fn a_tensor_core_kernel_that_cannot_compile_falls_back_to_the_tiled_kernel() {
    use super::gpu::kernels::{
        coop::TensorCores,
        matmul::{CoopTile, MatmulVariant, TileConfig},
    };
    use super::{Batch, config::ModelConfig, gpu, layout::ModelTensors, weights::Weights};
    let probe = gpu::open_device(gpu::AdapterChoice::Any).unwrap().unwrap();
    if probe.tensor_cores().is_some() {
        eprintln!("SKIPPED: {} has tensor cores; the fallback is not reachable here", probe.info.name);
        return;
    }
    let plan = gpu::KernelPlan {
        matmul: MatmulVariant::Cooperative {
            tile: CoopTile::Narrow,
            cores: TensorCores::NVIDIA,
            fallback: TileConfig::MEDIUM,
        },
        f16_weights: true,
        ..gpu::KernelPlan::choose(&probe.info, &probe.caps, Precision::Auto)
    };
    let dir = model_dir("llama9");
    let config = ModelConfig::load(&dir).unwrap();
    let weights = Weights::open(&dir).unwrap();
    let tensors = ModelTensors::locate(&config, &weights).unwrap();
    let model = gpu::GpuModel::with_options(&config, &tensors, probe, plan, None).unwrap();
    assert!(model.adapter_name().contains("the tensor-core kernel failed"), "{}", model.adapter_name());
    assert!(model.adapter_name().contains("matmul tiled"), "{}", model.adapter_name());
    let goldens = goldens("llama9");
    let case = &goldens["cases"][0];
    let ids: Vec<u32> = case["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let scores = model.forward(&Batch::pack(&[ids])).unwrap();
    assert_close(&scores[0], &floats(&case["scores"]), "llama9 after the fallback");
}

/// A text's scores do not depend on what it is batched with: scored alone, and packed
/// between other texts of other lengths, the bits are the same, on the CPU and on wgpu
/// (every kernel works per token or per sequence; nothing reduces across sequences).
#[test]
fn scores_do_not_depend_on_the_batch() {
    let goldens = goldens("llama9");
    // Texts of 1 to ~1500 tokens, so batches of every size class: a few rows, many.
    let mut texts: Vec<String> =
        goldens["cases"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_owned()).collect();
    texts.extend(["hello world!", "good morning", "a"].map(String::from));
    for device in [Device::Cpu, Device::Wgpu] {
        let model = RewardModel::load(
            &model_dir("llama9"),
            LoadOptions { device, add_bos: false, precision: Precision::F32, reward_token_ids: None },
        )
        .unwrap();
        let together = model.score_texts(&texts).unwrap();
        let reversed: Vec<String> = texts.iter().rev().cloned().collect();
        let mut backwards = model.score_texts(&reversed).unwrap();
        backwards.reverse();
        for (i, text) in texts.iter().enumerate() {
            let alone = model.score_texts(std::slice::from_ref(text)).unwrap();
            assert_eq!(alone[0], together[i], "{device:?}: text {i} alone vs in a batch of {}", texts.len());
            assert_eq!(backwards[i], together[i], "{device:?}: text {i} at another place in the batch");
            let pair = model.score_texts(&[text.clone(), texts[(i + 1) % texts.len()].clone()]).unwrap();
            assert_eq!(pair[0], together[i], "{device:?}: text {i} with one other");
        }
    }
}

fn token_ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// goldens.json read with object keys in file order (messages' keys reach `tojson`).
fn ordered_goldens(name: &str) -> steerlm_core::pyvalue::PyValue {
    let text = std::fs::read_to_string(model_dir(name).join("goldens.json")).unwrap();
    steerlm_core::pyvalue::PyValue::parse(&text).unwrap()
}

/// Conversations rendered with each fixture's chat template: the text and token ids
/// exactly as transformers' `apply_chat_template`, the scores within the tolerance.
#[test]
fn chat_templates_match_transformers_apply_chat_template() {
    use super::Prompt;
    use super::chat_template::Messages;
    for name in CHAT_MODELS {
        let options = LoadOptions { device: Device::Cpu, ..Default::default() };
        let model = RewardModel::load(&model_dir(name), options).unwrap();
        assert!(model.chat_template_source().is_some(), "{name} has a template");
        let goldens = goldens(name);
        let ordered = ordered_goldens(name);
        let ordered_cases = ordered.get("chat_cases").unwrap().as_array().unwrap();
        let cases = goldens["chat_cases"].as_array().unwrap();
        assert!(cases.len() >= 4, "{name}: chat cases");
        for (case, ordered_case) in cases.iter().zip(ordered_cases) {
            let what = format!("{name}/{}", case["name"]);
            let messages = Messages::from_py(ordered_case.get("messages").unwrap()).unwrap();
            assert_eq!(model.render_chat(&messages).unwrap(), case["rendered"].as_str().unwrap(), "{what}: text");
            let tokens = model.tokenize_prompt(Prompt::Chat(&messages)).unwrap();
            assert_eq!(tokens.ids, token_ids(&case["token_ids"]), "{what}: token ids");
            let scores = model.score(&[tokens.ids]).unwrap();
            assert_close(&scores[0], &floats(&case["scores"]), &what);
        }
        for case in goldens["chat_error_cases"].as_array().into_iter().flatten() {
            let messages = Messages::from_json(&case["messages"]).unwrap();
            let error = model.render_chat(&messages).unwrap_err().to_string();
            let expected = case["error"].as_str().unwrap();
            assert_eq!(error, format!("the chat template refused the messages: {expected}"), "{name}/{}", case["name"]);
        }
    }
}

#[test]
fn a_checkpoint_without_a_chat_template_says_so() {
    use super::chat_template::Messages;
    let model =
        RewardModel::load(&model_dir("mistral5"), LoadOptions { device: Device::Cpu, ..Default::default() }).unwrap();
    let messages = Messages::from_json(&serde_json::json!([{"role": "user", "content": "hi"}])).unwrap();
    let error = model.render_chat(&messages).unwrap_err().to_string();
    assert!(error.contains("has no chat template") && error.contains("tokenizer_config.json"), "{error}");
}

/// A causal LM's rewards are the logits of `--reward-token-ids` (default id 0), read
/// from `lm_head` or, when tied, from the embedding; on CPU and wgpu.
#[test]
fn causal_lm_rewards_are_the_logits_of_the_chosen_ids() {
    for name in CAUSAL_MODELS {
        let goldens = goldens(name);
        let ids = token_ids(&goldens["multi_token_ids"]);
        for device in [Device::Cpu, Device::Wgpu] {
            let options = LoadOptions {
                device,
                precision: Precision::F32,
                reward_token_ids: Some(ids.clone()),
                ..Default::default()
            };
            let model = RewardModel::load(&model_dir(name), options).unwrap();
            let labels: Vec<String> = ids.iter().map(|id| format!("logit_{id}")).collect();
            assert_eq!(model.labels(), labels);
            let cases = goldens["cases"].as_array().unwrap();
            let sequences: Vec<Vec<u32>> = cases.iter().map(|c| token_ids(&c["token_ids"])).collect();
            for (case, scores) in cases.iter().zip(model.score(&sequences).unwrap()) {
                assert_close(
                    &scores,
                    &floats(&case["multi_scores"]),
                    &format!("{name}/{} on {device:?}", case["name"]),
                );
            }
        }
    }
}

#[test]
fn reward_token_ids_are_checked() {
    let load = |name: &str, ids: Vec<u32>| {
        let options = LoadOptions { device: Device::Cpu, reward_token_ids: Some(ids), ..Default::default() };
        format!("{:#}", RewardModel::load(&model_dir(name), options).err().unwrap())
    };
    let e = load("qwen9", vec![0]);
    assert!(
        e.contains("--reward-token-ids is for *ForCausalLM") && e.contains("Qwen2ForSequenceClassification"),
        "{e}"
    );
    let e = load("llama-causal", vec![5, 32000]);
    assert!(e.contains("32000 is outside the vocabulary (32000 ids)"), "{e}");
    assert!(load("llama-causal", vec![]).contains("names no ids"));
}

/// A token the tokenizer has and the embedding has not (tokenizer.json and config.json
/// disagree) is an error naming the token, before anything is scored.
#[test]
fn a_token_outside_the_embedding_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let source = model_dir("llama9");
    for file in ["model.safetensors", "config.json"] {
        std::os::unix::fs::symlink(source.join(file), dir.path().join(file)).unwrap();
    }
    let mut tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("tokenizer.json")).unwrap()).unwrap();
    tokenizer["added_tokens"].as_array_mut().unwrap().push(serde_json::json!({"id": 40000, "content": "<zzz>",
        "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let model = RewardModel::load(dir.path(), LoadOptions { device: Device::Cpu, ..Default::default() }).unwrap();
    let error = format!("{:#}", model.tokenize_prompt(super::Prompt::Text("hello <zzz>")).unwrap_err());
    // (The tokenizers crate numbers an added token past the vocabulary: 32000 here.)
    assert!(error.contains("(\"<zzz>\") is outside the model's vocabulary of 32000 ids"), "{error}");
}

/// A bias the architecture table and config.json do not give the model is an error
/// naming it, not silently dropped (Qwen2's weights relabeled as Llama).
#[test]
fn a_stored_bias_the_config_does_not_declare_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let source = model_dir("qwen9");
    for file in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(source.join(file), dir.path().join(file)).unwrap();
    }
    let config = std::fs::read_to_string(source.join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("Qwen2ForSequenceClassification", "LlamaForSequenceClassification"),
    )
    .unwrap();
    let error = RewardModel::load(dir.path(), LoadOptions { device: Device::Cpu, ..Default::default() }).err().unwrap();
    let error = format!("{error:#}");
    assert!(error.contains("`model.layers.0.self_attn.q_proj.bias`") && error.contains("attention_bias"), "{error}");
}

/// The tensor-core path's arithmetic (f16 weights and inputs, f32 sums), emulated on the
/// CPU, against transformers' f32 goldens: within the stated `F16_TOLERANCE` on every
/// fixture. This is where the tolerance comes from, on any machine; the cooperative-matrix
/// kernel itself is checked against the goldens where an adapter has tensor cores.
#[test]
fn f16_arithmetic_stays_within_the_stated_tolerance() {
    use super::{F16_TOLERANCE, config::ModelConfig, cpu, layout::ModelTensors, weights::Weights};
    for name in MODELS {
        let dir = model_dir(name);
        let config = ModelConfig::load(&dir).unwrap();
        let weights = Weights::open(&dir).unwrap();
        let tensors = ModelTensors::locate(&config, &weights).unwrap();
        let model = cpu::CpuModel::with_arithmetic(&config, &tensors, cpu::Arithmetic::F16Inputs).unwrap();
        let mut worst = 0f32;
        for case in goldens(name)["cases"].as_array().unwrap() {
            let scores = model.forward(&super::Batch::pack(&[token_ids(&case["token_ids"])])).unwrap();
            for (a, b) in scores[0].iter().zip(floats(&case["scores"])) {
                worst = worst.max((a - b).abs());
            }
        }
        println!("{name}: max |f16 - golden| = {worst:.2e}");
        assert!(worst <= F16_TOLERANCE, "{name}: max |f16 - golden| {worst} > {F16_TOLERANCE}");
        assert!(worst > 0.0, "{name}: f16 emulation changed nothing; is it on?");
    }
}

/// What a program embedding the crate may pass `score` directly, bypassing the tokenizer:
/// no sequences is no scores, and an empty sequence, an id outside the vocabulary or a
/// sequence past the context is an error naming it, on both backends, never a panic.
#[test]
fn score_refuses_what_the_model_cannot_run_on_both_backends() {
    for device in [Device::Cpu, Device::Wgpu] {
        let model = RewardModel::load(&model_dir("llama9"), LoadOptions { device, ..Default::default() }).unwrap();
        assert!(model.score(&[]).unwrap().is_empty(), "{device:?}");
        let (vocab, context) = (model.config.vocab_size as u32, model.config.max_positions);
        let refused = |sequences: &[Vec<u32>]| format!("{:#}", model.score(sequences).unwrap_err());
        assert_eq!(refused(&[vec![1], vec![]]), "sequence 1 has no tokens", "{device:?}");
        assert_eq!(refused(&[vec![1, vocab]]), format!("token id {vocab} is outside the vocabulary ({vocab} ids)"));
        let long = vec![1; context + 1];
        assert_eq!(
            refused(&[long]),
            format!("sequence 0 has {} tokens, more than the context of {context}", context + 1)
        );
        // The same model still scores afterwards.
        assert_eq!(model.score(&[vec![1, 2, 3]]).unwrap()[0].len(), model.labels().len());
    }
}
