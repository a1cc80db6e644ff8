// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight (+ bias), or out[r, :] += that
// (Gemma2's normalised attention and MLP outputs joining the residual stream).
// One workgroup per row, reducing in workgroup memory.
//
// kernels/norm.rs makes an f16-output copy for the tensor-core matmuls that read f16 x
// (STEERLM_F16_ACTIVATIONS): `enable f16;` first, `Out` an f16 and HALF_OUT true. The
// values are saturated and converted exactly as those matmuls convert f32 x.

alias Out = f32;
const HALF_OUT: bool = false;

fn to_out(v: f32) -> Out {
    return Out(select(v, clamp(v, -65504.0, 65504.0), HALF_OUT));
}

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
@group(0) @binding(4) var<storage, read_write> out: array<Out>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wg.x + wg.y * groups.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.hidden;
    var sum = 0.0;
    for (var d = lid; d < p.hidden; d = d + 256u) {
        let v = x[base + d];
        sum = sum + v * v;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            partial[lid] = partial[lid] + partial[lid + stride];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(partial[0] / f32(p.hidden) + p.eps);
    for (var d = lid; d < p.hidden; d = d + 256u) {
        var v = x[base + d] * inv * weight[d];
        if (p.has_bias != 0u) {
            v = v + bias[d];
        }
        if (p.accumulate != 0u) {
            v = f32(out[base + d]) + v;
        }
        out[base + d] = to_out(v);
    }
}
