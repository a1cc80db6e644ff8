// Shared by matmul_coop_wide.wgsl and matmul_coop_square.wgsl (kernels/matmul.rs inserts
// it after matmul_common.wgsl): the output tile (128 rows x 128 columns, or 256 columns for
// the big tile) and its K step (K_FRAGS fragments deep), staging the operands of one K step
// through registers into f16 tiles in workgroup memory (quads of f16), and writing one
// accumulator out (straight to y, or through a staging area and the epilogue). Each shader
// declares INVOCATIONS (a number of subgroups).
// kernels/matmul.rs rewrites K_FRAGS from 2 to 4 for the deep tile (half the barriers per
// product, 46 KiB of workgroup memory), STAGES from 1 to 2 for the double-buffered tile
// (the wide shader stashes the next K step into the other copy while this step's products
// run, one barrier per step; 48 KiB), and N_FRAGS from 8 to 16 for the big tile (40 KiB).
//
// Sizes are written in fragments of FRAG x FRAG (16 here) and subgroups of SUBGROUP (32).
// kernels/coop.rs rewrites both to 8 for lavapipe (8x8x8 matrices, subgroups of 8): a
// 64x64 tile (64x128 for the big one) and a K step of 16, same code.

// Side of one cooperative-matrix fragment.
const FRAG: u32 = 16u;
const TILE_M: u32 = 8u * FRAG;
// Output columns of the tile, in fragments.
const N_FRAGS: u32 = 8u;
const TILE_N: u32 = N_FRAGS * FRAG;
const K_FRAGS: u32 = 2u;
const TILE_K: u32 = K_FRAGS * FRAG;
// Copies of the staged tiles.
const STAGES: u32 = 1u;
const SUBGROUP: u32 = 32u;
// The vec4s of x and of w an invocation stages per K step.
const STAGED_X: u32 = TILE_M * TILE_K / 4u / INVOCATIONS;
const STAGED_W: u32 = TILE_N * TILE_K / 4u / INVOCATIONS;
const_assert TILE_M * TILE_K / 4u == STAGED_X * INVOCATIONS;
const_assert TILE_N * TILE_K / 4u == STAGED_W * INVOCATIONS;
// Row stride of the staged tiles, padded; rows start 16-byte aligned.
const LDA: u32 = TILE_K + 8u;
// Quads of one copy of each staged tile.
const X_STAGE_QUADS: u32 = TILE_M * LDA / 4u;
const W_STAGE_QUADS: u32 = TILE_N * LDA / 4u;
// Row stride of one subgroup's FRAG x FRAG output staging area: padded by 4, except with
// two copies of the tiles, where the padding would take the workgroup past 48 KiB.
const LDC: u32 = FRAG + 4u * (2u - STAGES);

// Row stride of the staged tiles in quads.
const LDQ: u32 = LDA / 4u;
// The staged tiles hold quads (four f16s): one 8-byte store per staged item, where single
// f16s took four. Cooperative loads read them as f16 matrices, with offsets and strides in
// quads (SPIR-V allows a vector element type there).
var<workgroup> x_tile: array<vec4<f16>, STAGES * X_STAGE_QUADS>;
var<workgroup> w_tile: array<vec4<f16>, STAGES * W_STAGE_QUADS>;
var<workgroup> y_stage: array<f32, (INVOCATIONS / SUBGROUP) * FRAG * LDC>;

// Whether the next K step's operands are loaded while this step's products run (one more
// set of staged registers per invocation), or at the top of each step.
override PREFETCH: bool = false;

// Rows of output tiles per group of consecutive workgroups (8 unless STEERLM_TILE_GROUP
// says otherwise; 1 is plain row order). Workgroups start roughly in index order, so going
// through the tiles GROUP_M rows at a time, column by column, keeps GROUP_M row blocks of x
// and one column block of w in use together (and in L2), where row order streams every w
// tile past each row block in turn.
override GROUP_M: u32 = 8u;

// The first row and column of workgroup `group`'s output tile, in a grid of `groups`.
fn tile_origin(group: vec3<u32>, groups: vec3<u32>) -> vec2<u32> {
    let index = group.y * groups.x + group.x;
    let per_group = GROUP_M * groups.x;
    let first_row = (index / per_group) * GROUP_M;
    // The last group may hold fewer rows.
    let height = min(groups.y - first_row, GROUP_M);
    let within = index % per_group;
    return vec2<u32>((first_row + within % height) * TILE_M, (within / height) * TILE_N);
}

// How x is stored: f32, or f16 written by the norm before the matmul (kernels/matmul.rs
// rewrites this line to `vec4<f16>`; the binding of x is `array<XVec>`). The same values
// reach the tiles either way: the norm converts exactly as `x_half` does.
alias XVec = vec4<f32>;

// The gated MLP activation as f16 (the `_TO_HALF` epilogues), laid out like y: what a down
// projection reading f16 x takes. kernels/matmul.rs binds a placeholder for other epilogues.
@group(0) @binding(5) var<storage, read_write> y_half: array<f16>;

// The f16 weights, four to an item: the same buffer as matmul_common.wgsl's `w` (binding 2),
// read with one 8-byte load per item rather than two 4-byte ones, as the f16s they are (`w`
// itself is unused here, and naga and Vulkan allow a binding declared twice where one is
// used).
@group(0) @binding(2) var<storage, read> w_quads: array<vec4<f16>>;

// One K step of this invocation's operands, as loaded from global memory: vec4s of x and
// quads of f16 weights.
// x stays as stored until stash: converting it here, right after its load, measured
// 0.41-0.62x on an H100 (the conversion waits for the load, so the loads no longer overlap
// anything).
struct Staged {
    x: array<XVec, STAGED_X>,
    w: array<vec4<f16>, STAGED_W>,
}

// Four values of x as f16, saturated to f16's finite range (a no-op on f16 x).
fn x_half(v: XVec) -> vec4<f16> {
    return vec4<f16>(clamp(v, XVec(-65504.0), XVec(65504.0)));
}

// Staged item i of an operand's K step starting at vec4 k0: row i / (TILE_K / 4) of its tile,
// vec4 i % (TILE_K / 4) of the step (`staged_row` and `staged_k`). Rows past m or n repeat
// the last row (their outputs are never stored); k past its end reads as zeros.
fn staged_row(i: u32) -> u32 {
    return i / (TILE_K / 4u);
}

fn staged_k(i: u32, k0: u32) -> u32 {
    return k0 + i % (TILE_K / 4u);
}

fn fetch_x(i: u32, row0: u32, k0: u32) -> XVec {
    let kk = staged_k(i, k0);
    if (kk >= p.k / 4u) {
        return XVec();
    }
    return x[min(row0 + staged_row(i), p.m - 1u) * (p.k / 4u) + kk];
}

// Four f16 weights from k = 4 * kk of their row: one 8-byte load, nothing to convert.
fn fetch_w(i: u32, col0: u32, k0: u32) -> vec4<f16> {
    let kk = staged_k(i, k0);
    if (kk >= p.k / 4u) {
        return vec4<f16>();
    }
    return w_quads[min(col0 + staged_row(i), p.n - 1u) * (p.k / 4u) + kk];
}

// The quad of a staged tile's copy `copy` (of `copy_quads` each) that item i goes to.
fn staged_quad(i: u32, copy: u32, copy_quads: u32) -> u32 {
    return copy * copy_quads + staged_row(i) * LDQ + i % (TILE_K / 4u);
}

// The K step starting at vec4 k0: this invocation's items of x and of w (li, li +
// INVOCATIONS, ...), loads only, so they are all in flight at once.
fn fetch_step(li: u32, row0: u32, col0: u32, k0: u32) -> Staged {
    var staged: Staged;
    for (var j = 0u; j < STAGED_X; j = j + 1u) {
        staged.x[j] = fetch_x(li + j * INVOCATIONS, row0, k0);
    }
    for (var j = 0u; j < STAGED_W; j = j + 1u) {
        staged.w[j] = fetch_w(li + j * INVOCATIONS, col0, k0);
    }
    return staged;
}

// Writes a K step into copy `copy` of the tiles as f16 (x saturated to f16's finite range):
// one quad per item.
fn stash_step(staged: Staged, li: u32, copy: u32) {
    for (var j = 0u; j < STAGED_X; j = j + 1u) {
        x_tile[staged_quad(li + j * INVOCATIONS, copy, X_STAGE_QUADS)] = x_half(staged.x[j]);
    }
    for (var j = 0u; j < STAGED_W; j = j + 1u) {
        w_tile[staged_quad(li + j * INVOCATIONS, copy, W_STAGE_QUADS)] = staged.w[j];
    }
}

// Whether this workgroup's accumulators go straight to y (`emit`'s `direct`): a plain store
// or a residual add, no bias, the whole tile inside the output, and rows and the first
// column 16-byte aligned (what cooperative loads and stores to memory need). The same for
// every invocation of a workgroup.
fn stores_directly(row0: u32, col0: u32) -> bool {
    let plain = p.epilogue == EPILOGUE_STORE || p.epilogue == EPILOGUE_ACCUMULATE;
    return plain && p.has_bias == 0u && p.out_stride % 4u == 0u && p.out_offset % 4u == 0u
        && row0 + TILE_M <= p.m && col0 + TILE_N <= p.n;
}

// The starting value of the accumulator whose top-left output element is (row, col): zero,
// or, for a residual add stored directly, that fragment of y itself, so the products
// accumulate onto the residual and `emit` stores the sum (the o and down projections skip
// the staging area too; y + sum becomes a sum started at y, a different rounding order).
fn accumulator(direct: bool, row: u32, col: u32) -> coop_mat16x16<f32, C> {
    if (direct && p.epilogue == EPILOGUE_ACCUMULATE) {
        // naga 30 wants the index and the stride of a cooperative load as `let`s too.
        let index = row * p.out_stride + p.out_offset + col;
        let stride = p.out_stride;
        return coopLoadT<coop_mat16x16<f32, C>>(&y[index], stride);
    }
    return coop_mat16x16<f32, C>();
}

// Writes one FRAG x FRAG accumulator whose top-left output element is (row, col): stored
// straight into y where `direct` (see `stores_directly`), else through the subgroup's
// staging area, then bias and epilogue per element. Called by every invocation with the
// same `direct` (the staged path has barriers).
fn emit(acc: coop_mat16x16<f32, C>, direct: bool, sg: u32, lane: u32, row: u32, col: u32) {
    if (direct) {
        // naga 30 wants the index and the stride of a cooperative store as `let`s.
        let index = row * p.out_stride + p.out_offset + col;
        let stride = p.out_stride;
        coopStoreT(acc, &y[index], stride);
        return;
    }
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
            let index = rr * p.out_stride + p.out_offset + cc;
            switch p.epilogue {
                // Saturated and converted as the down projection would convert f32 x.
                case EPILOGUE_SILU_GATE_TO_HALF: {
                    y_half[index] = f16(clamp(silu_gate(y[index], value), -65504.0, 65504.0));
                }
                case EPILOGUE_GELU_TANH_GATE_TO_HALF: {
                    y_half[index] = f16(clamp(gelu_tanh_gate(y[index], value), -65504.0, 65504.0));
                }
                default: {
                    store(index, value);
                }
            }
        }
    }
    workgroupBarrier();
}

