// y[m, out_offset + j] = sum_k x[m, k] * w[j, k] (+ bias[out_offset + j])
//
// Linear layers: x is [m, k] f32, w is [n, k] in its stored dtype (f32, or bf16/f16
// packed two per u32 and widened here, so no shader-f16 feature is needed). Each
// invocation computes a 4x4 block of outputs from vec4 loads, without shared memory:
// register blocking runs ~4x faster than 16x16 shared-memory tiles on lavapipe and is
// what large GPUs want too. `out_offset` places one row-slice of a weight that was split
// to fit the storage-binding limit. k must be a multiple of 4.
//
// The epilogue folds the next elementwise pass into the store (see EPILOGUE_* below).
// This is the register-blocked variant, kept for software adapters where it is fastest.

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col0 = gid.x * 4u;
    let row0 = gid.y * 4u;
    if (col0 >= p.n || row0 >= p.m) {
        return;
    }
    let k4 = p.k / 4u;
    // Out-of-range rows/columns read a valid neighbour and are never written.
    let r0 = row0 * k4;
    let r1 = min(row0 + 1u, p.m - 1u) * k4;
    let r2 = min(row0 + 2u, p.m - 1u) * k4;
    let r3 = min(row0 + 3u, p.m - 1u) * k4;
    let c1 = min(col0 + 1u, p.n - 1u);
    let c2 = min(col0 + 2u, p.n - 1u);
    let c3 = min(col0 + 3u, p.n - 1u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kk = 0u; kk < k4; kk = kk + 1u) {
        let w0 = load_w4(col0, kk * 4u);
        let w1 = load_w4(c1, kk * 4u);
        let w2 = load_w4(c2, kk * 4u);
        let w3 = load_w4(c3, kk * 4u);
        let x0 = x[r0 + kk];
        let x1 = x[r1 + kk];
        let x2 = x[r2 + kk];
        let x3 = x[r3 + kk];
        acc0 = acc0 + vec4<f32>(dot(x0, w0), dot(x0, w1), dot(x0, w2), dot(x0, w3));
        acc1 = acc1 + vec4<f32>(dot(x1, w0), dot(x1, w1), dot(x1, w2), dot(x1, w3));
        acc2 = acc2 + vec4<f32>(dot(x2, w0), dot(x2, w1), dot(x2, w2), dot(x2, w3));
        acc3 = acc3 + vec4<f32>(dot(x3, w0), dot(x3, w1), dot(x3, w2), dot(x3, w3));
    }
    var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r = r + 1u) {
        let row = row0 + r;
        if (row >= p.m) {
            break;
        }
        for (var c = 0u; c < 4u; c = c + 1u) {
            let col = col0 + c;
            if (col >= p.n) {
                break;
            }
            var value = rows[r][c];
            if (p.has_bias != 0u) {
                value = value + bias[p.out_offset + col];
            }
            store(row * p.out_stride + p.out_offset + col, value);
        }
    }
}
