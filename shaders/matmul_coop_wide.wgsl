// y[m, out_offset + j] = sum_k x[m, k] * w[j, k] (+ bias[out_offset + j]), then the epilogue,
// on tensor cores: matmul_coop.wgsl with 128x128 tiles, for adapters whose subgroups are
// exactly 32 wide (NVIDIA). Same bindings, parameters, epilogues and f16 weights.
//
// Measured on an H100, matmul_coop.wgsl's 64x64 tile (one 32x32 quadrant per subgroup)
// spends most of its time staging tiles: 8 tensor-core products per subgroup per K step.
// Here a workgroup of 256 invocations (8 subgroups) stages a 128-row x tile and a 128-row w
// tile per K step of 32 (64 for the deep tile), and each subgroup owns a 32x64 block of the
// output: 2 A and 4 B fragments feed 8 products per 16-deep step, twice the products per
// staged byte.
//
// The accumulators leave through a small per-subgroup staging area, one 16x16 fragment at
// a time, so the bias and the epilogue are applied per element in f32 with bounds checks
// (m and n arbitrary; k a multiple of 4, its tail read as zeros). A plain store or a
// residual add of a whole tile without bias (the q/k/v, up, o and down projections) skips
// that: each fragment is stored straight into y, with no barrier (a residual add starts
// its accumulators from y).
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

// FRAG, SUBGROUP, the tile sizes and the staged tiles: matmul_coop_staging.wgsl.
// Eight subgroups.
const INVOCATIONS: u32 = 8u * SUBGROUP;

// One FRAG-deep step of the subgroup's 2x4-fragment block (rows r.., columns c.. of the tile) from
// copy `copy` of the staged tiles, at k offset kk. Every index and stride is a `let` of its
// own.
fn block_step(
    r: u32,
    c: u32,
    copy: u32,
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
    // In quads of the staged tiles (`kk` in f16s, a multiple of 4).
    let stride = LDQ;
    let qa = copy * X_STAGE_QUADS + kk / 4u;
    let qb = copy * W_STAGE_QUADS + kk / 4u;
    let ia0 = qa + r * LDQ;
    let ia1 = qa + (r + FRAG) * LDQ;
    let ib0 = qb + c * LDQ;
    let ib1 = qb + (c + FRAG) * LDQ;
    let ib2 = qb + (c + 2u * FRAG) * LDQ;
    let ib3 = qb + (c + 3u * FRAG) * LDQ;
    // x_tile is A [m][k] row-major; w_tile [n][k] is B (k x n) column-major.
    let a0 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[ia0], stride);
    let a1 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[ia1], stride);
    let b0 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib0], stride);
    let b1 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib1], stride);
    let b2 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib2], stride);
    let b3 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib3], stride);
    block_products(a0, a1, b0, b1, b2, b3, c00, c01, c02, c03, c10, c11, c12, c13);
}

// The 8 products of one FRAG-deep step of the subgroup's block.
fn block_products(
    a0: coop_mat16x16<f16, A>,
    a1: coop_mat16x16<f16, A>,
    b0: coop_mat16x16<f16, B>,
    b1: coop_mat16x16<f16, B>,
    b2: coop_mat16x16<f16, B>,
    b3: coop_mat16x16<f16, B>,
    c00: ptr<function, coop_mat16x16<f32, C>>,
    c01: ptr<function, coop_mat16x16<f32, C>>,
    c02: ptr<function, coop_mat16x16<f32, C>>,
    c03: ptr<function, coop_mat16x16<f32, C>>,
    c10: ptr<function, coop_mat16x16<f32, C>>,
    c11: ptr<function, coop_mat16x16<f32, C>>,
    c12: ptr<function, coop_mat16x16<f32, C>>,
    c13: ptr<function, coop_mat16x16<f32, C>>,
) {
    *c00 = coopMultiplyAdd(a0, b0, *c00);
    *c01 = coopMultiplyAdd(a0, b1, *c01);
    *c02 = coopMultiplyAdd(a0, b2, *c02);
    *c03 = coopMultiplyAdd(a0, b3, *c03);
    *c10 = coopMultiplyAdd(a1, b0, *c10);
    *c11 = coopMultiplyAdd(a1, b1, *c11);
    *c12 = coopMultiplyAdd(a1, b2, *c12);
    *c13 = coopMultiplyAdd(a1, b3, *c13);
}

// Bench only (`gpu-info --bench`'s loop parts; 0 in every model): the main loop with parts
// left out, on the same grid and K steps, so that the full kernel's time splits into what
// each part adds. 1: the products alone, on fragments loaded once; 2: with their loads from
// workgroup memory every step; 3: with the two barriers of each K step; 4: with each K step
// stashed into workgroup memory (registers of zeros), all but the global loads. The tiles
// are never filled (workgroup memory starts zeroed), so y gets zeros.
override PROBE: u32 = 0u;

fn probe_loop(
    r: u32,
    c: u32,
    li: u32,
    k4: u32,
    c00: ptr<function, coop_mat16x16<f32, C>>,
    c01: ptr<function, coop_mat16x16<f32, C>>,
    c02: ptr<function, coop_mat16x16<f32, C>>,
    c03: ptr<function, coop_mat16x16<f32, C>>,
    c10: ptr<function, coop_mat16x16<f32, C>>,
    c11: ptr<function, coop_mat16x16<f32, C>>,
    c12: ptr<function, coop_mat16x16<f32, C>>,
    c13: ptr<function, coop_mat16x16<f32, C>>,
) {
    if (PROBE == 1u) {
        let stride = LDQ;
        let ia0 = r * LDQ;
        let ia1 = (r + FRAG) * LDQ;
        let ib0 = c * LDQ;
        let ib1 = (c + FRAG) * LDQ;
        let ib2 = (c + 2u * FRAG) * LDQ;
        let ib3 = (c + 3u * FRAG) * LDQ;
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[ia0], stride);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&x_tile[ia1], stride);
        let b0 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib0], stride);
        let b1 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib1], stride);
        let b2 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib2], stride);
        let b3 = coopLoad<coop_mat16x16<f16, B>>(&w_tile[ib3], stride);
        for (var k0 = 0u; k0 < k4; k0 = k0 + TILE_K / 4u) {
            for (var kk = 0u; kk < TILE_K; kk = kk + FRAG) {
                block_products(a0, a1, b0, b1, b2, b3, c00, c01, c02, c03, c10, c11, c12, c13);
            }
        }
        return;
    }
    let zeros = Staged();
    for (var k0 = 0u; k0 < k4; k0 = k0 + TILE_K / 4u) {
        if (PROBE >= 4u) {
            stash_step(zeros, li, 0u);
        }
        if (PROBE >= 3u) {
            workgroupBarrier();
        }
        for (var kk = 0u; kk < TILE_K; kk = kk + FRAG) {
            block_step(r, c, 0u, kk, c00, c01, c02, c03, c10, c11, c12, c13);
        }
        if (PROBE >= 3u) {
            workgroupBarrier();
        }
    }
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
    // The subgroup's 2x4-fragment block: 4 block rows x 2 block columns.
    let r = (sg / 2u) * (2u * FRAG);
    let c = (sg % 2u) * (4u * FRAG);

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

    var staged: Staged;
    if (PROBE != 0u) {
        probe_loop(r, c, li, k4, &c00, &c01, &c02, &c03, &c10, &c11, &c12, &c13);
    } else if (STAGES == 2u) {
        // Double-buffered: step i's products read one copy while step i + 1 is loaded and
        // stashed into the other. The barrier that ends step i - 1 is what keeps step i's
        // stash off the copy step i - 1 read.
        stash_step(fetch_step(li, row0, col0, 0u), li, 0u);
        workgroupBarrier();
        var current = 0u;
        for (var k0 = 0u; k0 < k4; k0 = k0 + TILE_K / 4u) {
            staged = fetch_step(li, row0, col0, k0 + TILE_K / 4u);
            for (var kk = 0u; kk < TILE_K; kk = kk + FRAG) {
                block_step(r, c, current, kk, &c00, &c01, &c02, &c03, &c10, &c11, &c12, &c13);
            }
            // Past the end of k the stash is zeros no product reads.
            stash_step(staged, li, 1u - current);
            workgroupBarrier();
            current = 1u - current;
        }
    } else {
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
                // The next K step's operands load while this step's products run (past the
                // end of k they read as zeros and are never stashed).
                staged = fetch_step(li, row0, col0, k0 + TILE_K / 4u);
            }
            for (var kk = 0u; kk < TILE_K; kk = kk + FRAG) {
                block_step(r, c, 0u, kk, &c00, &c01, &c02, &c03, &c10, &c11, &c12, &c13);
            }
            workgroupBarrier();
        }
    }

    emit(c00, direct, sg, lane, top, left);
    emit(c01, direct, sg, lane, top, left + FRAG);
    emit(c02, direct, sg, lane, top, left + 2u * FRAG);
    emit(c03, direct, sg, lane, top, left + 3u * FRAG);
    emit(c10, direct, sg, lane, top + FRAG, left);
    emit(c11, direct, sg, lane, top + FRAG, left + FRAG);
    emit(c12, direct, sg, lane, top + FRAG, left + 2u * FRAG);
    emit(c13, direct, sg, lane, top + FRAG, left + 3u * FRAG);
}
