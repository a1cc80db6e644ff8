// Nemotron's LayerNorm1P: out = (x - mean) / sqrt(var + eps) * (1 + weight) + bias,
// with the biased variance. One workgroup per row.

struct Params {
    rows: u32,
    hidden: u32,
    eps: f32,
    has_bias: u32,
    // 1: add the result to `out` (a residual connection) instead of storing it.
    accumulate: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 256>;

fn reduce(lid: u32, value: f32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wg.x + wg.y * groups.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.hidden;
    var sum = 0.0;
    for (var d = lid; d < p.hidden; d = d + 256u) {
        sum = sum + x[base + d];
    }
    let mean = reduce(lid, sum) / f32(p.hidden);
    var squares = 0.0;
    for (var d = lid; d < p.hidden; d = d + 256u) {
        let c = x[base + d] - mean;
        squares = squares + c * c;
    }
    let inv = 1.0 / sqrt(reduce(lid, squares) / f32(p.hidden) + p.eps);
    for (var d = lid; d < p.hidden; d = d + 256u) {
        var value = (x[base + d] - mean) * inv * (1.0 + weight[d]);
        // Without a bias a one-element stand-in is bound: never read past it.
        if (p.has_bias != 0u) {
            value = value + bias[d];
        }
        if (p.accumulate != 0u) {
            value = value + out[base + d];
        }
        out[base + d] = value;
    }
}
