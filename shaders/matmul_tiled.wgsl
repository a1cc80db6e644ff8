// y[m, out_offset + j] = sum_k x[m, k] * w[j, k] (+ bias[out_offset + j]), then the epilogue
//
// The portable workgroup-tiled matmul. A workgroup computes a TILE_M x TILE_N tile of the
// output; the K dimension is walked in steps of TILE_K, each step staging the x tile
// [TILE_M, TILE_K] and the w tile [TILE_N, TILE_K] in workgroup memory (weights widened
// to f32 on the way in), so every loaded value is used TILE_N (x) or TILE_M (w) times.
// Each invocation keeps a THREAD_M x THREAD_N register block of outputs; its rows are
// `ty + i * WG_Y` and its columns `tx + j * WG_X` (strided, so neighbouring invocations
// read neighbouring rows of the staged tiles: no bank conflicts with the one-vec4 row
// padding, and coalesced stores).
//
// Bindings, parameters and epilogues are those of matmul.wgsl. k must be a multiple of 4;
// m and n are arbitrary (rows/columns past them read a clamped neighbour, never stored;
// k past the end reads zeros). The tile sizes are `override` constants chosen per adapter
// (TileConfig in kernels/matmul.rs): TILE_M % THREAD_M == 0, TILE_N % THREAD_N == 0,
// TILE_K % 4 == 0, THREAD_M, THREAD_N <= 8.

override TILE_M: u32 = 64u;
override TILE_N: u32 = 64u;
override TILE_K: u32 = 16u;
override THREAD_M: u32 = 4u;
override THREAD_N: u32 = 4u;

// Invocations along the output's columns (x) and rows (y).
override WG_X: u32 = TILE_N / THREAD_N;
override WG_Y: u32 = TILE_M / THREAD_M;
// vec4s per staged row, one of them padding.
override ROW4: u32 = TILE_K / 4u + 1u;

// The largest register block (8 x 8).
const MAX_BLOCK: u32 = 64u;

var<workgroup> x_tile: array<vec4<f32>, TILE_M * ROW4>;
var<workgroup> w_tile: array<vec4<f32>, TILE_N * ROW4>;

@compute @workgroup_size(WG_X, WG_Y)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = group.y * TILE_M;
    let col0 = group.x * TILE_N;
    let tx = lid.x;
    let ty = lid.y;
    let li = ty * WG_X + tx;
    let invocations = WG_X * WG_Y;
    let k4 = p.k / 4u;
    let steps4 = TILE_K / 4u;
    let last_row = p.m - 1u;
    let last_col = p.n - 1u;

    var acc: array<f32, MAX_BLOCK>;
    for (var k0 = 0u; k0 < k4; k0 = k0 + steps4) {
        // Stage the tiles: neighbouring invocations load neighbouring vec4s of a row.
        for (var i = li; i < TILE_M * steps4; i = i + invocations) {
            let r = i / steps4;
            let kk = k0 + i % steps4;
            var v = vec4<f32>(0.0);
            if (kk < k4) {
                v = x[min(row0 + r, last_row) * k4 + kk];
            }
            x_tile[r * ROW4 + i % steps4] = v;
        }
        for (var i = li; i < TILE_N * steps4; i = i + invocations) {
            let r = i / steps4;
            let kk = k0 + i % steps4;
            var v = vec4<f32>(0.0);
            if (kk < k4) {
                v = load_w4(min(col0 + r, last_col), kk * 4u);
            }
            w_tile[r * ROW4 + i % steps4] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < steps4; kk = kk + 1u) {
            var a: array<vec4<f32>, 8>;
            var b: array<vec4<f32>, 8>;
            for (var i = 0u; i < THREAD_M; i = i + 1u) {
                a[i] = x_tile[(ty + i * WG_Y) * ROW4 + kk];
            }
            for (var j = 0u; j < THREAD_N; j = j + 1u) {
                b[j] = w_tile[(tx + j * WG_X) * ROW4 + kk];
            }
            for (var i = 0u; i < THREAD_M; i = i + 1u) {
                for (var j = 0u; j < THREAD_N; j = j + 1u) {
                    acc[i * THREAD_N + j] = acc[i * THREAD_N + j] + dot(a[i], b[j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < THREAD_M; i = i + 1u) {
        let row = row0 + ty + i * WG_Y;
        if (row >= p.m) {
            break;
        }
        for (var j = 0u; j < THREAD_N; j = j + 1u) {
            let col = col0 + tx + j * WG_X;
            if (col >= p.n) {
                break;
            }
            var value = acc[i * THREAD_N + j];
            if (p.has_bias != 0u) {
                value = value + bias[p.out_offset + col];
            }
            store(row * p.out_stride + p.out_offset + col, value);
        }
    }
}
