// y[m, out_offset + j] = sum_k x[m, k] * w[j, k] (+ bias[out_offset + j]), then the epilogue,
// on tensor cores: matmul_coop.wgsl with 128x128 tiles, for adapters whose subgroups are
// exactly 32 wide (NVIDIA). Same bindings, parameters, epilogues and f16 weights.
//
// Measured on an H100, matmul_coop.wgsl's 64x64 tile (one 32x32 quadrant per subgroup)
// spends most of its time staging tiles: 8 tensor-core products per subgroup per K step.
// Here a workgroup of 256 invocations (8 subgroups) stages a 128-row x tile and a 128-row w
// tile per K step of 32, and each subgroup owns a 32x64 block of the output: 2 A and 4 B
// fragments feed 8 products per 16-deep step, twice the products per staged byte.
//
// The accumulators leave through a small per-subgroup staging area, one 16x16 fragment at
// a time, so the bias and the epilogue are applied per element in f32 with bounds checks
// (m and n arbitrary; k a multiple of 4, its tail read as zeros).
//
// Cooperative operations need subgroup-uniform control flow; everything below that
// depends on the subgroup depends on subgroup_id only, and the loops are uniform over the
// workgroup.
//
// Sizes are written in fragments of FRAG x FRAG (16 here) and subgroups of SUBGROUP (32).
// kernels/coop.rs rewrites both to 8 for lavapipe (8x8x8 matrices, subgroups of 8), which
// is how CI runs this kernel: a 64x64 tile, a K step of 16, 64 invocations, same code.

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// Side of one cooperative-matrix fragment.
const FRAG: u32 = 16u;
const TILE_M: u32 = 8u * FRAG;
const TILE_N: u32 = 8u * FRAG;
const TILE_K: u32 = 2u * FRAG;
const SUBGROUP: u32 = 32u;
// Eight subgroups.
const INVOCATIONS: u32 = 8u * SUBGROUP;
// Each K step stages TILE_M x TILE_K of each operand, four vec4s per invocation.
const_assert TILE_M * TILE_K / 4u == 4u * INVOCATIONS;
// Whether the next K step's operands are loaded while this step's products run (one more
// staged set of registers per invocation), or at the top of each step.
override PREFETCH: bool = false;
// Row stride of the staged tiles, padded; rows start 16-byte aligned.
const LDA: u32 = TILE_K + 8u;
// Row stride of one subgroup's FRAG x FRAG staging area.
const LDC: u32 = FRAG + 4u;

var<workgroup> x_tile: array<f16, TILE_M * LDA>;
var<workgroup> w_tile: array<f16, TILE_N * LDA>;
var<workgroup> y_stage: array<f32, (INVOCATIONS / SUBGROUP) * FRAG * LDC>;

// One vec4 of x and the matching four f16 weights (two u32s), as loaded from global memory.
struct Staged {
    x: vec4<f32>,
    w: vec2<u32>,
}

// Staged item i of the K step starting at vec4 k0: row i / (TILE_K / 4) of the tile (of x,
// and of w), vec4 i % (TILE_K / 4) of the step. Rows past m or n repeat the last row (their
// outputs are never stored); k past its end reads as zeros.
fn fetch(i: u32, row0: u32, col0: u32, k0: u32) -> Staged {
    let k4 = p.k / 4u;
    let rr = i / (TILE_K / 4u);
    let kk = k0 + i % (TILE_K / 4u);
    var staged = Staged(vec4<f32>(0.0), vec2<u32>(0u));
    if (kk < k4) {
        staged.x = x[min(row0 + rr, p.m - 1u) * k4 + kk];
        let e = (min(col0 + rr, p.n - 1u) * p.k + kk * 4u) / 2u;
        staged.w = vec2<u32>(w[e], w[e + 1u]);
    }
    return staged;
}

// Writes staged item i into the tiles as f16 (x saturated to f16's finite range).
fn stash(staged: Staged, i: u32) {
    let xh = vec4<f16>(clamp(staged.x, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
    let o = (i / (TILE_K / 4u)) * LDA + (i % (TILE_K / 4u)) * 4u;
    x_tile[o] = xh.x;
    x_tile[o + 1u] = xh.y;
    x_tile[o + 2u] = xh.z;
    x_tile[o + 3u] = xh.w;
    let w01 = vec2<f16>(unpack2x16float(staged.w.x));
    let w23 = vec2<f16>(unpack2x16float(staged.w.y));
    w_tile[o] = w01.x;
    w_tile[o + 1u] = w01.y;
    w_tile[o + 2u] = w23.x;
    w_tile[o + 3u] = w23.y;
}

// One FRAG-deep step of the subgroup's 2x4-fragment block (rows r.., columns c.. of the tile) from
// the staged tiles at k offset kk. Every index and stride is a `let` of its own.
fn block_step(
    r: u32,
    c: u32,
    kk: u32,
    c00: ptr<function, coop_mat16x16<f32, C>>,
    c01: ptr<function, coop_mat16x16<f32, C>>,
    c02: ptr<function, coop_mat16x16<f32, C>>,
    c03: ptr<function, coop_mat16x16<f32, C>>,
    c10: ptr<function, coop_mat16x16<f32, C>>,
    c11: ptr<function, coop_mat16x16<f32, C>>,
    c12: ptr<function, coop_mat16x16<f32, C>>,
    c13: ptr<function, coop_mat16x16<f32, C>>,
) {
    let stride = LDA;
    let ia0 = r * LDA + kk;
    let ia1 = (r + FRAG) * LDA + kk;
    let ib0 = c * LDA + kk;
    let ib1 = (c + FRAG) * LDA + kk;
    let ib2 = (c + 2u * FRAG) * LDA + kk;
    let ib3 = (c + 3u * FRAG) * LDA + kk;
    // x_tile is A [m][k] row-major; w_tile [n][k] is B (k x n) column-major.
    let a0 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[ia0], stride);
    let a1 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[ia1], stride);
    let b0 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib0], stride);
    let b1 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib1], stride);
    let b2 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib2], stride);
    let b3 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib3], stride);
    *c00 = coopMultiplyAdd(a0, b0, *c00);
    *c01 = coopMultiplyAdd(a0, b1, *c01);
    *c02 = coopMultiplyAdd(a0, b2, *c02);
    *c03 = coopMultiplyAdd(a0, b3, *c03);
    *c10 = coopMultiplyAdd(a1, b0, *c10);
    *c11 = coopMultiplyAdd(a1, b1, *c11);
    *c12 = coopMultiplyAdd(a1, b2, *c12);
    *c13 = coopMultiplyAdd(a1, b3, *c13);
}

// Writes one FRAG x FRAG accumulator whose top-left output element is (row, col): through the
// subgroup's staging area, then bias and epilogue per element. Called by every invocation
// (it has barriers).
fn emit(acc: coop_mat16x16<f32, C>, sg: u32, lane: u32, row: u32, col: u32) {
    let base = sg * FRAG * LDC;
    let stride = LDC;
    coopStoreT(acc, &y_stage[base], stride);
    workgroupBarrier();
    for (var e = lane; e < FRAG * FRAG; e = e + SUBGROUP) {
        let rr = row + e / FRAG;
        let cc = col + e % FRAG;
        if (rr < p.m && cc < p.n) {
            var value = y_stage[base + (e / FRAG) * LDC + e % FRAG];
            if (p.has_bias != 0u) {
                value = value + bias[p.out_offset + cc];
            }
            store(rr * p.out_stride + p.out_offset + cc, value);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(INVOCATIONS)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let row0 = group.y * TILE_M;
    let col0 = group.x * TILE_N;
    let k4 = p.k / 4u;
    // The subgroup's 2x4-fragment block: 4 block rows x 2 block columns.
    let r = (sg / 2u) * (2u * FRAG);
    let c = (sg % 2u) * (4u * FRAG);

    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c02 = coop_mat16x16<f32, C>();
    var c03 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    var c12 = coop_mat16x16<f32, C>();
    var c13 = coop_mat16x16<f32, C>();

    // Each invocation stages four vec4s of each operand per K step (the const_assert above),
    // written out so their loads are all in flight at once. (Without PREFETCH these first
    // loads are repeated at the top of the first step: one extra step of loads.)
    var s0 = fetch(li, row0, col0, 0u);
    var s1 = fetch(li + INVOCATIONS, row0, col0, 0u);
    var s2 = fetch(li + 2u * INVOCATIONS, row0, col0, 0u);
    var s3 = fetch(li + 3u * INVOCATIONS, row0, col0, 0u);
    for (var k0 = 0u; k0 < k4; k0 = k0 + TILE_K / 4u) {
        if (!PREFETCH) {
            s0 = fetch(li, row0, col0, k0);
            s1 = fetch(li + INVOCATIONS, row0, col0, k0);
            s2 = fetch(li + 2u * INVOCATIONS, row0, col0, k0);
            s3 = fetch(li + 3u * INVOCATIONS, row0, col0, k0);
        }
        stash(s0, li);
        stash(s1, li + INVOCATIONS);
        stash(s2, li + 2u * INVOCATIONS);
        stash(s3, li + 3u * INVOCATIONS);
        workgroupBarrier();
        if (PREFETCH) {
            // The next K step's operands, loading while this step's products run (past
            // the end of k they read as zeros and are never stashed).
            let next = k0 + TILE_K / 4u;
            s0 = fetch(li, row0, col0, next);
            s1 = fetch(li + INVOCATIONS, row0, col0, next);
            s2 = fetch(li + 2u * INVOCATIONS, row0, col0, next);
            s3 = fetch(li + 3u * INVOCATIONS, row0, col0, next);
        }
        for (var kk = 0u; kk < TILE_K; kk = kk + FRAG) {
            block_step(r, c, kk, &c00, &c01, &c02, &c03, &c10, &c11, &c12, &c13);
        }
        workgroupBarrier();
    }

    let top = row0 + r;
    let left = col0 + c;
    emit(c00, sg, lane, top, left);
    emit(c01, sg, lane, top, left + FRAG);
    emit(c02, sg, lane, top, left + 2u * FRAG);
    emit(c03, sg, lane, top, left + 3u * FRAG);
    emit(c10, sg, lane, top + FRAG, left);
    emit(c11, sg, lane, top + FRAG, left + FRAG);
    emit(c12, sg, lane, top + FRAG, left + 2u * FRAG);
    emit(c13, sg, lane, top + FRAG, left + 3u * FRAG);
}
