// y[m, out_offset + j] = sum_k x[m, k] * w[j, k] (+ bias[out_offset + j]), then the epilogue,
// on tensor cores (wgpu's cooperative matrices; VK_KHR_cooperative_matrix on Vulkan).
//
// Same bindings, parameters and epilogues as matmul.wgsl, but the weight must be f16
// (packed two per u32; kernels/matmul.rs converts bf16/f32 weights at load), and the
// adapter must offer 16x16x16 f16 x f16 -> f32 matrices (subgroup scope).
//
// A workgroup of 128 invocations computes a 64x64 output tile. Each K step of 32 stages
// x (f32, converted to f16, saturated to f16's finite range) and w (f16) in workgroup
// memory, row-major [row][k]; the tile's four 32x32 quadrants are shared out over the
// subgroups (one each with 32-wide subgroups, two each with 64-wide ones), each quadrant
// 2x2 f32 accumulators of 16x16. At the end the accumulators go through workgroup memory
// so the bias and the epilogue are applied per element, in f32, with bounds checks
// (m and n arbitrary; k a multiple of 4, its tail read as zeros).
//
// Cooperative operations need subgroup-uniform control flow. The quadrant branches below
// depend on subgroup_id only, so they are uniform in each subgroup, but naga's uniformity
// analysis asks for workgroup uniformity (reported under the derivative_uniformity rule):
// that check is switched off here.
//
// Sizes are written in fragments of FRAG x FRAG (16 here); kernels/coop.rs rewrites FRAG
// and the matrix types to 8 for adapters that only offer 8x8x8 matrices (a 32x32 tile;
// lavapipe's subgroups of 8 leave 12 of its 16 subgroups to staging only).

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// Side of one cooperative-matrix fragment; a quadrant is 2x2 fragments.
const FRAG: u32 = 16u;
const QUADRANT: u32 = 2u * FRAG;
const TILE_M: u32 = 4u * FRAG;
const TILE_N: u32 = 4u * FRAG;
const TILE_K: u32 = 2u * FRAG;
const INVOCATIONS: u32 = 128u;
// Row strides of the staged tiles, padded; rows start 16-byte aligned.
const LDA: u32 = TILE_K + 8u;
const LDC: u32 = TILE_N + 4u;

var<workgroup> x_tile: array<f16, TILE_M * LDA>;
var<workgroup> w_tile: array<f16, TILE_N * LDA>;
var<workgroup> y_tile: array<f32, TILE_M * LDC>;

// One FRAG-deep step of quadrant q (rows (q / 2) * QUADRANT, columns (q % 2) * QUADRANT)
// from the staged tiles at k offset kk. Every index and stride is a `let` of its own.
fn quadrant_step(
    q: u32,
    kk: u32,
    c00: ptr<function, coop_mat16x16<f32, C>>,
    c01: ptr<function, coop_mat16x16<f32, C>>,
    c10: ptr<function, coop_mat16x16<f32, C>>,
    c11: ptr<function, coop_mat16x16<f32, C>>,
) {
    let r = (q / 2u) * QUADRANT;
    let c = (q % 2u) * QUADRANT;
    let stride = LDA;
    let ia0 = r * LDA + kk;
    let ia1 = (r + FRAG) * LDA + kk;
    let ib0 = c * LDA + kk;
    let ib1 = (c + FRAG) * LDA + kk;
    // x_tile is A [m][k] row-major; w_tile [n][k] is B (k x n) column-major.
    let a0 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[ia0], stride);
    let a1 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[ia1], stride);
    let b0 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib0], stride);
    let b1 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib1], stride);
    *c00 = coopMultiplyAdd(a0, b0, *c00);
    *c01 = coopMultiplyAdd(a0, b1, *c01);
    *c10 = coopMultiplyAdd(a1, b0, *c10);
    *c11 = coopMultiplyAdd(a1, b1, *c11);
}

fn quadrant_store(
    q: u32,
    c00: coop_mat16x16<f32, C>,
    c01: coop_mat16x16<f32, C>,
    c10: coop_mat16x16<f32, C>,
    c11: coop_mat16x16<f32, C>,
) {
    let r = (q / 2u) * QUADRANT;
    let c = (q % 2u) * QUADRANT;
    let stride = LDC;
    let i00 = r * LDC + c;
    let i01 = r * LDC + c + FRAG;
    let i10 = (r + FRAG) * LDC + c;
    let i11 = (r + FRAG) * LDC + c + FRAG;
    coopStoreT(c00, &y_tile[i00], stride);
    coopStoreT(c01, &y_tile[i01], stride);
    coopStoreT(c10, &y_tile[i10], stride);
    coopStoreT(c11, &y_tile[i11], stride);
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    let row0 = group.y * TILE_M;
    let col0 = group.x * TILE_N;
    let k4 = p.k / 4u;
    let last_row = p.m - 1u;
    let last_col = p.n - 1u;
    // The subgroup's quadrants: `qa`, and `qb` where there are fewer than 4 subgroups.
    let qa = sg;
    let qb = sg + subgroups;

    var a00 = coop_mat16x16<f32, C>();
    var a01 = coop_mat16x16<f32, C>();
    var a10 = coop_mat16x16<f32, C>();
    var a11 = coop_mat16x16<f32, C>();
    var b00 = coop_mat16x16<f32, C>();
    var b01 = coop_mat16x16<f32, C>();
    var b10 = coop_mat16x16<f32, C>();
    var b11 = coop_mat16x16<f32, C>();

    for (var k0 = 0u; k0 < k4; k0 = k0 + TILE_K / 4u) {
        // TILE_M rows x TILE_K / 4 vec4s of each operand.
        for (var i = li; i < TILE_M * (TILE_K / 4u); i = i + INVOCATIONS) {
            let r = i / (TILE_K / 4u);
            let c4 = i % (TILE_K / 4u);
            let kk = k0 + c4;
            var xv = vec4<f32>(0.0);
            var wv = vec2<u32>(0u);
            if (kk < k4) {
                xv = x[min(row0 + r, last_row) * k4 + kk];
                let e = (min(col0 + r, last_col) * p.k + kk * 4u) / 2u;
                wv = vec2<u32>(w[e], w[e + 1u]);
            }
            let xh = vec4<f16>(clamp(xv, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
            let o = r * LDA + c4 * 4u;
            x_tile[o] = xh.x;
            x_tile[o + 1u] = xh.y;
            x_tile[o + 2u] = xh.z;
            x_tile[o + 3u] = xh.w;
            let w01 = vec2<f16>(unpack2x16float(wv.x));
            let w23 = vec2<f16>(unpack2x16float(wv.y));
            w_tile[o] = w01.x;
            w_tile[o + 1u] = w01.y;
            w_tile[o + 2u] = w23.x;
            w_tile[o + 3u] = w23.y;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk = kk + FRAG) {
            if (qa < 4u) {
                quadrant_step(qa, kk, &a00, &a01, &a10, &a11);
            }
            if (qb < 4u) {
                quadrant_step(qb, kk, &b00, &b01, &b10, &b11);
            }
        }
        workgroupBarrier();
    }

    if (qa < 4u) {
        quadrant_store(qa, a00, a01, a10, a11);
    }
    if (qb < 4u) {
        quadrant_store(qb, b00, b01, b10, b11);
    }
    workgroupBarrier();

    // Bias and epilogue per element, neighbouring invocations on neighbouring columns.
    for (var i = li; i < TILE_M * TILE_N; i = i + INVOCATIONS) {
        let row = row0 + i / TILE_N;
        let col = col0 + i % TILE_N;
        if (row < p.m && col < p.n) {
            var value = y_tile[(i / TILE_N) * LDC + i % TILE_N];
            if (p.has_bias != 0u) {
                value = value + bias[p.out_offset + col];
            }
            store(row * p.out_stride + p.out_offset + col, value);
        }
    }
}
