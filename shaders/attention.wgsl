// Causal attention over packed sequences with grouped KV heads. One invocation per
// (token, query head) streams over the keys of its own sequence (`seq_start[t] ..= t`)
// with an online softmax. Query head h reads KV head h / (heads / kv_heads).

struct Params {
    tokens: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> seq_start: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const MAX_HEAD_DIM: u32 = 256u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * 64u;
    let t = index / p.heads;
    if (t >= p.tokens) {
        return;
    }
    let h = index % p.heads;
    let kv = h / (p.heads / p.kv_heads);
    let hd = p.head_dim;
    let q_base = t * p.heads * hd + h * hd;
    let kv_stride = p.kv_heads * hd;
    let start = seq_start[t];

    // Start from the first key so no -inf enters exp().
    var acc: array<f32, MAX_HEAD_DIM>;
    var k_base = start * kv_stride + kv * hd;
    var s = 0.0;
    for (var d = 0u; d < hd; d = d + 1u) {
        s = s + q[q_base + d] * k[k_base + d];
    }
    var m = s * p.scale;
    var l = 1.0;
    for (var d = 0u; d < hd; d = d + 1u) {
        acc[d] = v[k_base + d];
    }
    for (var j = start + 1u; j <= t; j = j + 1u) {
        k_base = j * kv_stride + kv * hd;
        s = 0.0;
        for (var d = 0u; d < hd; d = d + 1u) {
            s = s + q[q_base + d] * k[k_base + d];
        }
        s = s * p.scale;
        let m_new = max(m, s);
        let correction = exp(m - m_new);
        let weight = exp(s - m_new);
        l = l * correction + weight;
        for (var d = 0u; d < hd; d = d + 1u) {
            acc[d] = acc[d] * correction + weight * v[k_base + d];
        }
        m = m_new;
    }
    for (var d = 0u; d < hd; d = d + 1u) {
        out[q_base + d] = acc[d] / l;
    }
}
