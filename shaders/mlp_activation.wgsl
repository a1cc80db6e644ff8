// The MLP's nonlinearity, in place on `up`:
//   GATED (Llama, Mistral, Qwen2): up = silu(gate) * up
//   otherwise (Nemotron):          up = relu(up)^2

struct Params {
    count: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override GATED: bool = true;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> up: array<f32>;
@group(0) @binding(2) var<storage, read> gate: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p.count) {
        return;
    }
    if (GATED) {
        let g = gate[i];
        // Clamp so exp() cannot overflow; silu(g) is ~0 there anyway.
        up[i] = up[i] * (g / (1.0 + exp(min(-g, 80.0))));
    } else {
        let u = max(up[i], 0.0);
        up[i] = u * u;
    }
}
