// Shared by matmul.wgsl, matmul_tiled.wgsl and matmul_coop.wgsl (kernels/matmul.rs puts
// it after each shader's directives): parameters, bindings, the epilogue and the weight
// load. y[m, out_offset + j] = sum_k x[m, k] * w[j, k] (+ bias[out_offset + j]), then the
// epilogue; x is [m, k] f32, w is [n, k] in its stored dtype packed into u32s.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    out_stride: u32,
    out_offset: u32,
    has_bias: u32,
    epilogue: u32,
    _pad: u32,
}

// y = value
const EPILOGUE_STORE: u32 = 0u;
// y = y + value: the residual connection.
const EPILOGUE_ACCUMULATE: u32 = 1u;
// y = y * silu(value): the gate projection applied to the up projection already in y.
const EPILOGUE_SILU_GATE: u32 = 2u;
// y = relu(value)^2: Nemotron's squared-ReLU MLP activation.
const EPILOGUE_SQUARED_RELU: u32 = 3u;
// y = y * gelu_tanh(value): Gemma's gate (GELU, tanh approximation).
const EPILOGUE_GELU_TANH_GATE: u32 = 4u;
// The two gates again, their result written as f16 to a second output instead of y
// (matmul_coop_staging.wgsl only, for a down projection reading f16 x).
const EPILOGUE_SILU_GATE_TO_HALF: u32 = 5u;
const EPILOGUE_GELU_TANH_GATE_TO_HALF: u32 = 6u;

// up * silu(gate). Clamped so exp() cannot overflow; silu(gate) is ~0 there anyway.
fn silu_gate(up: f32, gate: f32) -> f32 {
    return up * (gate / (1.0 + exp(min(-gate, 80.0))));
}

// up * gelu_tanh(gate). The clamp keeps tanh's exp-based evaluation finite; tanh(10) is 1.0
// in f32.
fn gelu_tanh_gate(up: f32, gate: f32) -> f32 {
    let inner = clamp(0.7978846 * (gate + 0.044715 * gate * gate * gate), -10.0, 10.0);
    return up * (0.5 * gate * (1.0 + tanh(inner)));
}

fn store(index: u32, value: f32) {
    switch p.epilogue {
        case EPILOGUE_ACCUMULATE: {
            y[index] = y[index] + value;
        }
        case EPILOGUE_SILU_GATE: {
            y[index] = silu_gate(y[index], value);
        }
        case EPILOGUE_GELU_TANH_GATE: {
            y[index] = gelu_tanh_gate(y[index], value);
        }
        case EPILOGUE_SQUARED_RELU: {
            let r = max(value, 0.0);
            y[index] = r * r;
        }
        default: {
            y[index] = value;
        }
    }
}

// 0: f32, 1: bf16, 2: f16 (the cooperative kernel runs f16 only).
override DTYPE: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

// Four consecutive weights of row `row` from element `k`, widened to f32.
fn load_w4(row: u32, k: u32) -> vec4<f32> {
    let e = row * p.k + k;
    if (DTYPE == 0u) {
        return vec4<f32>(bitcast<f32>(w[e]), bitcast<f32>(w[e + 1u]), bitcast<f32>(w[e + 2u]), bitcast<f32>(w[e + 3u]));
    }
    let a = w[e / 2u];
    let b = w[e / 2u + 1u];
    if (DTYPE == 1u) {
        // bf16 is the top half of an f32: widen by shifting.
        return vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u), bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
    }
    return vec4<f32>(unpack2x16float(a), unpack2x16float(b));
}
