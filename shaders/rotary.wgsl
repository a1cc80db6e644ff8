// Rotary position embedding in place, rotate_half layout, on the first `rot` dims of
// every head. cos/sin come from a table computed on the CPU exactly as transformers
// does (WGSL's sin/cos are only accurate to ~2^-11).

struct Params {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    rot: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> cos_table: array<f32>;
@group(0) @binding(4) var<storage, read> sin_table: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let half = p.rot / 2u;
    let index = gid.x + gid.y * groups.x * 256u;
    let per_token = p.heads * half;
    let t = index / per_token;
    if (t >= p.tokens) {
        return;
    }
    let h = (index % per_token) / half;
    let i = index % half;
    let base = t * p.heads * p.head_dim + h * p.head_dim;
    let row = positions[t] * p.rot;
    let a = x[base + i];
    let b = x[base + i + half];
    x[base + i] = a * cos_table[row + i] - b * sin_table[row + i];
    x[base + i + half] = b * cos_table[row + i + half] + a * sin_table[row + i + half];
}
