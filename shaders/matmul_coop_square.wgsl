// y[m, out_offset + j] = sum_k x[m, k] * w[j, k] (+ bias[out_offset + j]), then the epilogue,
// on tensor cores: matmul_coop_wide.wgsl's 128x128 tile and K step of 32, computed by 4
// subgroups of 32 that each own a 64x64 square of the output (4x4 fragments, 16 f32
// accumulators) instead of 8 subgroups of 32x64. Same bindings, parameters, epilogues and
// f16 weights; staging and output through matmul_coop_staging.wgsl.
//
// Why: per 16-deep step a subgroup loads 4 A and 4 B fragments from workgroup memory for
// 16 tensor-core products, where the wide tile loads 6 for 8: a third less workgroup-memory
// traffic per product (the layout of llama.cpp's Vulkan cooperative-matrix matmul), at the
// price of twice the accumulator registers per invocation (measured on an H100 with the
// older staging: 0.85-0.88x the wide tile; STEERLM_COOP_TILE=square, square-prefetch,
// square-deep).
//
// The big tile (STEERLM_COOP_TILE=big, big-prefetch; kernels/matmul.rs sets N_FRAGS to 16)
// is this shader on a 128x256 tile: 8 subgroups of 64x64, the warp tile of CUTLASS's
// Ampere GEMMs. It has the square's workgroup-memory traffic per product and the wide
// tile's 8 subgroups, and stages a quarter less per product than either (12 quads per
// invocation per K step for 16 products per 16-deep step, where the wide tile stages 8 for
// 8). Not yet measured on hardware.
//
// Sizes are written in fragments of FRAG x FRAG (16 here) and subgroups of SUBGROUP (32);
// kernels/coop.rs rewrites both to 8 for lavapipe: a 64x64 tile, 32 invocations (64x128
// and 64 for the big tile).

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// FRAG, SUBGROUP, the tile sizes and the staged tiles: matmul_coop_staging.wgsl.
// One subgroup per 4x4-fragment square of the tile: 2x2 squares (4 subgroups), 2x4 for
// the big tile (8).
const SQUARE: u32 = 4u * FRAG;
const SQUARE_COLUMNS: u32 = TILE_N / SQUARE;
const INVOCATIONS: u32 = (TILE_M / SQUARE) * SQUARE_COLUMNS * SUBGROUP;

// One FRAG-deep step of the subgroup's 4x4-fragment square (rows r.., columns c.. of the
// tile) from the staged tiles at k offset kk.
fn square_step(
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
    c20: ptr<function, coop_mat16x16<f32, C>>,
    c21: ptr<function, coop_mat16x16<f32, C>>,
    c22: ptr<function, coop_mat16x16<f32, C>>,
    c23: ptr<function, coop_mat16x16<f32, C>>,
    c30: ptr<function, coop_mat16x16<f32, C>>,
    c31: ptr<function, coop_mat16x16<f32, C>>,
    c32: ptr<function, coop_mat16x16<f32, C>>,
    c33: ptr<function, coop_mat16x16<f32, C>>,
) {
    // In quads of the staged tiles (`kk` in f16s, a multiple of 4; one copy of each).
    let stride = LDQ;
    let q = kk / 4u;
    // x_tile is A [m][k] row-major; w_tile [n][k] is B (k x n) column-major.
    let a0 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[q + (r + 0u * FRAG) * LDQ], stride);
    let a1 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[q + (r + 1u * FRAG) * LDQ], stride);
    let a2 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[q + (r + 2u * FRAG) * LDQ], stride);
    let a3 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[q + (r + 3u * FRAG) * LDQ], stride);
    let b0 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[q + (c + 0u * FRAG) * LDQ], stride);
    let b1 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[q + (c + 1u * FRAG) * LDQ], stride);
    let b2 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[q + (c + 2u * FRAG) * LDQ], stride);
    let b3 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[q + (c + 3u * FRAG) * LDQ], stride);
    *c00 = coopMultiplyAdd(a0, b0, *c00);
    *c01 = coopMultiplyAdd(a0, b1, *c01);
    *c02 = coopMultiplyAdd(a0, b2, *c02);
    *c03 = coopMultiplyAdd(a0, b3, *c03);
    *c10 = coopMultiplyAdd(a1, b0, *c10);
    *c11 = coopMultiplyAdd(a1, b1, *c11);
    *c12 = coopMultiplyAdd(a1, b2, *c12);
    *c13 = coopMultiplyAdd(a1, b3, *c13);
    *c20 = coopMultiplyAdd(a2, b0, *c20);
    *c21 = coopMultiplyAdd(a2, b1, *c21);
    *c22 = coopMultiplyAdd(a2, b2, *c22);
    *c23 = coopMultiplyAdd(a2, b3, *c23);
    *c30 = coopMultiplyAdd(a3, b0, *c30);
    *c31 = coopMultiplyAdd(a3, b1, *c31);
    *c32 = coopMultiplyAdd(a3, b2, *c32);
    *c33 = coopMultiplyAdd(a3, b3, *c33);
}

@compute @workgroup_size(INVOCATIONS)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let origin = tile_origin(group, groups);
    let row0 = origin.x;
    let col0 = origin.y;
    let k4 = p.k / 4u;
    // The subgroup's square, in row order.
    let r = (sg / SQUARE_COLUMNS) * SQUARE;
    let c = (sg % SQUARE_COLUMNS) * SQUARE;

    let top = row0 + r;
    let left = col0 + c;
    let direct = stores_directly(row0, col0);
    var c00 = accumulator(direct, top, left);
    var c01 = accumulator(direct, top, left + FRAG);
    var c02 = accumulator(direct, top, left + 2u * FRAG);
    var c03 = accumulator(direct, top, left + 3u * FRAG);
    var c10 = accumulator(direct, top + FRAG, left);
    var c11 = accumulator(direct, top + FRAG, left + FRAG);
    var c12 = accumulator(direct, top + FRAG, left + 2u * FRAG);
    var c13 = accumulator(direct, top + FRAG, left + 3u * FRAG);
    var c20 = accumulator(direct, top + 2u * FRAG, left);
    var c21 = accumulator(direct, top + 2u * FRAG, left + FRAG);
    var c22 = accumulator(direct, top + 2u * FRAG, left + 2u * FRAG);
    var c23 = accumulator(direct, top + 2u * FRAG, left + 3u * FRAG);
    var c30 = accumulator(direct, top + 3u * FRAG, left);
    var c31 = accumulator(direct, top + 3u * FRAG, left + FRAG);
    var c32 = accumulator(direct, top + 3u * FRAG, left + 2u * FRAG);
    var c33 = accumulator(direct, top + 3u * FRAG, left + 3u * FRAG);

    var staged: Staged;
    if (PREFETCH) {
        staged = fetch_step(li, row0, col0, 0u);
    }
    for (var k0 = 0u; k0 < k4; k0 = k0 + TILE_K / 4u) {
        if (!PREFETCH) {
            staged = fetch_step(li, row0, col0, k0);
        }
        stash_step(staged, li, 0u);
        workgroupBarrier();
        if (PREFETCH) {
            staged = fetch_step(li, row0, col0, k0 + TILE_K / 4u);
        }
        for (var kk = 0u; kk < TILE_K; kk = kk + FRAG) {
            square_step(r, c, kk, &c00, &c01, &c02, &c03, &c10, &c11, &c12, &c13, &c20, &c21, &c22, &c23, &c30, &c31, &c32, &c33);
        }
        workgroupBarrier();
    }

    emit(c00, direct, sg, lane, top + 0u * FRAG, left + 0u * FRAG);
    emit(c01, direct, sg, lane, top + 0u * FRAG, left + 1u * FRAG);
    emit(c02, direct, sg, lane, top + 0u * FRAG, left + 2u * FRAG);
    emit(c03, direct, sg, lane, top + 0u * FRAG, left + 3u * FRAG);
    emit(c10, direct, sg, lane, top + 1u * FRAG, left + 0u * FRAG);
    emit(c11, direct, sg, lane, top + 1u * FRAG, left + 1u * FRAG);
    emit(c12, direct, sg, lane, top + 1u * FRAG, left + 2u * FRAG);
    emit(c13, direct, sg, lane, top + 1u * FRAG, left + 3u * FRAG);
    emit(c20, direct, sg, lane, top + 2u * FRAG, left + 0u * FRAG);
    emit(c21, direct, sg, lane, top + 2u * FRAG, left + 1u * FRAG);
    emit(c22, direct, sg, lane, top + 2u * FRAG, left + 2u * FRAG);
    emit(c23, direct, sg, lane, top + 2u * FRAG, left + 3u * FRAG);
    emit(c30, direct, sg, lane, top + 3u * FRAG, left + 0u * FRAG);
    emit(c31, direct, sg, lane, top + 3u * FRAG, left + 1u * FRAG);
    emit(c32, direct, sg, lane, top + 3u * FRAG, left + 2u * FRAG);
    emit(c33, direct, sg, lane, top + 3u * FRAG, left + 3u * FRAG);
}
