// Attention of single query rows over packed sequences with grouped KV heads. One
// workgroup of 64 invocations per (query row, query head): the row's keys
// (`key_range[r].x .. key_range[r].y`: its own sequence up to itself, or the last
// `p.window` of those in a sliding layer) are taken 64 at a
// time, each invocation scoring one key, then every invocation folds the block into its
// share of the output dimensions with an online softmax. Query head h reads KV head
// h / (heads / kv_heads). The last layer uses it for each sequence's last token only;
// flash_attention.wgsl does whole sequences.

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    scale: f32,
    // 0: none.
    softcap: f32,
    // A sliding layer's window (the last `window` keys of the range); 0xffffffff: none.
    window: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_range: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const BLOCK: u32 = 64u;
// Output dimensions per invocation: head_dim <= 4 * BLOCK = 256.
const DIMS: u32 = 4u;
// Below any real score, and far enough from -FLT_MAX that subtracting stays finite.
const LOWEST: f32 = -1.0e30;

var<workgroup> scores: array<f32, BLOCK>;

// Gemma2's attention soft cap, `softcap * tanh(s / softcap)`, when `softcap` > 0. The clamp
// keeps tanh's exp-based evaluation from overflowing; tanh(10) is 1.0 in f32 already.
fn cap_score(s: f32) -> f32 {
    if (p.softcap > 0.0) {
        return p.softcap * tanh(clamp(s / p.softcap, -10.0, 10.0));
    }
    return s;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = wg.x + wg.y * groups.x;
    if (index >= p.rows * p.heads) {
        return;
    }
    let t = index / p.heads; // query row
    let h = index % p.heads;
    let kv = h / (p.heads / p.kv_heads);
    let hd = p.head_dim;
    let q_base = t * p.heads * hd + h * hd;
    let kv_stride = p.kv_heads * hd;
    let end = key_range[t].y;
    var start = key_range[t].x;
    if (end > p.window) {
        start = max(start, end - p.window);
    }
    let count = end - start;

    var acc: array<f32, DIMS>;
    var m = LOWEST;
    var l = 0.0;
    for (var block = 0u; block < count; block = block + BLOCK) {
        var s = LOWEST;
        if (block + lid < count) {
            let k_base = (start + block + lid) * kv_stride + kv * hd;
            var dot = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                dot = dot + q[q_base + d] * k[k_base + d];
            }
            s = cap_score(dot * p.scale);
        }
        scores[lid] = s;
        workgroupBarrier();

        let valid = min(BLOCK, count - block);
        var block_max = m;
        for (var i = 0u; i < valid; i = i + 1u) {
            block_max = max(block_max, scores[i]);
        }
        let correction = exp(m - block_max);
        l = l * correction;
        for (var r = 0u; r < DIMS; r = r + 1u) {
            acc[r] = acc[r] * correction;
        }
        for (var i = 0u; i < valid; i = i + 1u) {
            let weight = exp(scores[i] - block_max);
            l = l + weight;
            let v_base = (start + block + i) * kv_stride + kv * hd;
            for (var r = 0u; r < DIMS; r = r + 1u) {
                let d = lid + r * BLOCK;
                if (d < hd) {
                    acc[r] = acc[r] + weight * v[v_base + d];
                }
            }
        }
        m = block_max;
        workgroupBarrier();
    }
    for (var r = 0u; r < DIMS; r = r + 1u) {
        let d = lid + r * BLOCK;
        if (d < hd) {
            out[q_base + d] = acc[r] / l;
        }
    }
}
