// Causal attention for prefill over packed sequences with grouped KV heads, on tensor cores
// (wgpu's cooperative matrices): flash_attention.wgsl's blocks, bindings and parameters, with
// QK^T and PV as 16x16x16 f16 x f16 -> f32 products. For adapters whose subgroups are
// exactly 32 wide (NVIDIA); HEAD_DIM a multiple of 16, at most 128.
//
// One workgroup of 128 invocations (4 subgroups) per (block of query rows, KV head). Its 64
// query slots are (row, head) pairs, row-major, as in flash_attention.wgsl, so the K/V tiles
// are shared by the block's rows and by the group's query heads; subgroup g owns slots
// 16g..16g+15. q is staged once as f16; K and V tiles of 32 keys are staged as f16.
//
// Two passes instead of an online softmax. WGSL's cooperative matrices have no per-element
// access, so an accumulator cannot be rescaled row by row when a row's maximum grows. Pass 1
// takes each slot's maximum score over all its keys (QK^T only); pass 2 recomputes the scores,
// P = exp(S - max) (each at most 1, staged as f16) and accumulates O += P V in the
// accumulators, with the row sums in f32. QK^T runs twice: 1.5x the products of one pass,
// all on tensor cores. Tiles above the block's causal diagonal are never loaded, nor, in a
// sliding layer, tiles before the window of the block's first row. ONE_PASS
// (below) is the alternative: a lazily moved reference maximum, and rows rescaled through
// workgroup memory when it moves.
//
// The per-element work between the products (the maximum, exp and the row sums) is spread
// over every invocation: SPLIT invocations per slot, each over PART keys of every tile,
// keeping its running maximum and sum in registers; the parts are combined once, after
// each pass. Each invocation walks its keys starting at a different column, so a
// subgroup's reads of the scores fall in distinct workgroup-memory banks.
//
// Scores are scaled by `p.scale` and soft-capped where `p.softcap` > 0, in f32, as in
// flash_attention.wgsl, and keys outside a sliding layer's window are masked (`visible`).
// Inputs are rounded to f16 (saturated to its finite range).
//
// Sizes are written in fragments of FRAG x FRAG (16 here) and subgroups of SUBGROUP (32).
// kernels/coop.rs rewrites both to 8 for lavapipe (8x8x8 matrices, subgroups of 8), which
// is how CI runs this kernel: 32 query slots, 16-key tiles, head sizes up to 64, 32
// invocations, same code.

enable f16;
enable wgpu_cooperative_matrix;
diagnostic(off, derivative_uniformity);

// [tokens, heads * HEAD_DIM]: f32, or f16 for an output projection reading f16 x
// (kernels/attention.rs rewrites `Out` and HALF_OUT; saturated and converted as that
// matmul would convert f32 x).
@group(0) @binding(5) var<storage, read_write> out: array<Out>;
alias Out = f32;
const HALF_OUT: bool = false;

fn to_out(v: f32) -> Out {
    return Out(select(v, clamp(v, -65504.0, 65504.0), HALF_OUT));
}

// Side of one cooperative-matrix fragment.
const FRAG: u32 = 16u;

override HEAD_DIM: u32 = 64u;
// FRAG-wide output fragments per slot row.
override FRAGS: u32 = HEAD_DIM / FRAG;
override HD4: u32 = HEAD_DIM / 4u;
// f16 row stride of the q, K and V tiles, padded; rows start 16-byte aligned.
override LDQ: u32 = HEAD_DIM + 8u;
// The same in quads (vec4<f16>): the q, K and V tiles hold quads, one 8-byte store per staged
// vec4 where single f16s took four; cooperative loads read them with offsets and strides in
// quads.
override LDQ4: u32 = LDQ / 4u;
// Whether stage_kv issues all of an invocation's K/V loads before it converts any (the
// matmuls' staging measured 1.6-2.4x over converting each load as it arrives). Unmeasured
// here, so on request only: STEERLM_FLASH_LOADS_FIRST=1. (Declared before any function:
// after them, naga 30's pipeline-constant pass panics.)
override LOADS_FIRST: bool = false;
// One pass instead of two (STEERLM_FLASH_ONE_PASS=1, on request until measured): each slot
// keeps a reference maximum that only moves when a tile's scores pass it by more than
// RESCALE_MARGIN, so P = exp(S - reference) stays below e^RESCALE_MARGIN (f16 holds it);
// when it moves, the accumulators' rows are rescaled through workgroup memory. QK^T runs
// once instead of twice. (0 rescales whenever a maximum grows: the tests use it.)
override ONE_PASS: bool = false;
override RESCALE_MARGIN: f32 = 8.0;

const QUERIES: u32 = 4u * FRAG;
const KEYS: u32 = 2u * FRAG;
const SUBGROUP: u32 = 32u;
// Four subgroups.
const INVOCATIONS: u32 = 4u * SUBGROUP;
// f32 row stride of the scores; f16 row stride of the probabilities.
const LDS: u32 = KEYS;
const LDP: u32 = KEYS + 8u;
// Below any real score, and far enough from -FLT_MAX that subtracting stays finite.
const LOWEST: f32 = -1.0e30;
// Invocations per query slot in the softmax work (2 here, 1 with 8x8 fragments), and the
// keys of each tile one of them takes.
const SPLIT: u32 = INVOCATIONS / QUERIES;
const PART: u32 = KEYS / SPLIT;
const_assert SPLIT * QUERIES == INVOCATIONS;
const_assert PART * SPLIT == KEYS;

var<workgroup> q_tile: array<vec4<f16>, QUERIES * LDQ4>;
var<workgroup> k_tile: array<vec4<f16>, KEYS * LDQ4>;
var<workgroup> v_tile: array<vec4<f16>, KEYS * LDQ4>;
// Scores of the tile [slot][key]; at the end, each subgroup's output staging.
var<workgroup> s_tile: array<f32, QUERIES * LDS>;
var<workgroup> p_tile: array<f16, QUERIES * LDP>;
// Each invocation's running maximum, then its sum, to combine per slot.
var<workgroup> partial: array<f32, INVOCATIONS>;
// Each slot's row sum at the end; its reference maximum during the one-pass loop.
var<workgroup> row_sum: array<f32, QUERIES>;
// Whether any slot's reference maximum moved in this tile (one pass).
var<workgroup> rescale_flag: u32;

fn cap_score(s: f32) -> f32 {
    if (p.softcap > 0.0) {
        return p.softcap * tanh(clamp(s / p.softcap, -10.0, 10.0));
    }
    return s;
}

fn to_f16(x: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(x, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
}

// The most vec4s of K (and of V) an invocation stages per tile: KEYS keys of the largest
// head size (8 fragments) over the workgroup.
const KV_STAGED: u32 = KEYS * (8u * FRAG / 4u) / INVOCATIONS;

// Writes one vec4 of K, and of V when `with_v`, at quad o of the tiles.
fn store_kv(o: u32, kh: vec4<f16>, vh: vec4<f16>, with_v: bool) {
    k_tile[o] = kh;
    if (with_v) {
        v_tile[o] = vh;
    }
}

// Stages keys tile..tile+n (zeros past n) of the KV head: K, and V when `with_v`.
fn stage_kv(li: u32, tile: u32, n: u32, kv_head: u32, with_v: bool) {
    if (LOADS_FIRST) {
        stage_kv_loads_first(li, tile, n, kv_head, with_v);
        return;
    }
    let kv_stride = p.kv_heads * HD4;
    for (var i = li; i < KEYS * HD4; i = i + INVOCATIONS) {
        let key = i / HD4;
        let c = i % HD4;
        var kh = vec4<f16>(0.0);
        var vh = vec4<f16>(0.0);
        if (key < n) {
            let src = (tile + key) * kv_stride + kv_head * HD4 + c;
            kh = to_f16(k[src]);
            if (with_v) {
                vh = to_f16(v[src]);
            }
        }
        store_kv(key * LDQ4 + c, kh, vh, with_v);
    }
}

// stage_kv with this invocation's items (li, li + INVOCATIONS, ...) all loaded first, then
// all converted and stored.
fn stage_kv_loads_first(li: u32, tile: u32, n: u32, kv_head: u32, with_v: bool) {
    let kv_stride = p.kv_heads * HD4;
    let items = KEYS * HD4;
    var ks: array<vec4<f32>, KV_STAGED>;
    var vs: array<vec4<f32>, KV_STAGED>;
    for (var j = 0u; j < KV_STAGED; j = j + 1u) {
        let i = li + j * INVOCATIONS;
        let key = i / HD4;
        ks[j] = vec4<f32>(0.0);
        vs[j] = vec4<f32>(0.0);
        if (i < items && key < n) {
            let src = (tile + key) * kv_stride + kv_head * HD4 + i % HD4;
            ks[j] = k[src];
            if (with_v) {
                vs[j] = v[src];
            }
        }
    }
    for (var j = 0u; j < KV_STAGED; j = j + 1u) {
        let i = li + j * INVOCATIONS;
        if (i < items) {
            store_kv((i / HD4) * LDQ4 + i % HD4, to_f16(ks[j]), to_f16(vs[j]), with_v);
        }
    }
}

// One FRAG-deep step of the scores of slots r..r+FRAG-1 against the tile's two fragments
// of keys.
fn scores_step(r: u32, d: u32, s0: ptr<function, coop_mat16x16<f32, C>>, s1: ptr<function, coop_mat16x16<f32, C>>) {
    // In quads (`d` in f16s, a multiple of FRAG).
    let stride = LDQ4;
    let ia = r * LDQ4 + d / 4u;
    let ib0 = d / 4u;
    let ib1 = FRAG * LDQ4 + d / 4u;
    // q_tile [slot][d] is A row-major; k_tile [key][d] is B (d x key) column-major.
    let a = coopLoadT<coop_mat16x16<f16, A>>(&q_tile[ia], stride);
    let b0 = coopLoad<coop_mat16x16<f16, B>>(&k_tile[ib0], stride);
    let b1 = coopLoad<coop_mat16x16<f16, B>>(&k_tile[ib1], stride);
    *s0 = coopMultiplyAdd(a, b0, *s0);
    *s1 = coopMultiplyAdd(a, b1, *s1);
}

// The raw scores q.k of slots r..r+FRAG-1 against the staged keys, into s_tile.
fn tile_scores(r: u32) {
    var s0 = coop_mat16x16<f32, C>();
    var s1 = coop_mat16x16<f32, C>();
    for (var d = 0u; d < HEAD_DIM; d = d + FRAG) {
        scores_step(r, d, &s0, &s1);
    }
    let stride = LDS;
    let i0 = r * LDS;
    let i1 = r * LDS + FRAG;
    coopStoreT(s0, &s_tile[i0], stride);
    coopStoreT(s1, &s_tile[i1], stride);
}

// O[slots r.., columns FRAG j..] += P[slots r.., keys kk..kk+FRAG-1] V[keys kk.., columns FRAG j..].
fn pv_step(r: u32, kk: u32, j: u32, o: ptr<function, coop_mat16x16<f32, C>>) {
    let p_stride = LDP;
    let v_stride = LDQ4;
    let ia = r * LDP + kk;
    // In quads of v_tile.
    let ib = kk * LDQ4 + j * FRAG / 4u;
    // p_tile [slot][key] is A row-major; v_tile [key][d] is B (key x d) row-major.
    let a = coopLoadT<coop_mat16x16<f16, A>>(&p_tile[ia], p_stride);
    let b = coopLoadT<coop_mat16x16<f16, B>>(&v_tile[ib], v_stride);
    *o = coopMultiplyAdd(a, b, *o);
}

// The query row of slot s of a block (idle slots shadow the block's last row).
fn slot_row(s: u32, first: u32, count: u32, group: u32) -> u32 {
    return first + min(s / group, count - 1u);
}

// Multiplies rows r..r+FRAG-1 of the accumulator by their slots' factors (in
// partial[slot * SPLIT]), through the subgroup's rows of s_tile. Called by every invocation
// (it has barriers).
fn rescale(o: ptr<function, coop_mat16x16<f32, C>>, r: u32, lane: u32) {
    let stride = LDS;
    let i0 = r * LDS;
    coopStoreT(*o, &s_tile[i0], stride);
    workgroupBarrier();
    for (var e = lane; e < FRAG * FRAG; e = e + SUBGROUP) {
        let s = r + e / FRAG;
        let i = s * LDS + e % FRAG;
        s_tile[i] = s_tile[i] * partial[s * SPLIT];
    }
    workgroupBarrier();
    *o = coopLoadT<coop_mat16x16<f32, C>>(&s_tile[i0], stride);
    // The load is done before the next fragment is stored over the same rows.
    workgroupBarrier();
}

// O[slots r..] += P V over the staged tile: every output fragment of the subgroup.
fn pv_tile(
    r: u32,
    o0: ptr<function, coop_mat16x16<f32, C>>,
    o1: ptr<function, coop_mat16x16<f32, C>>,
    o2: ptr<function, coop_mat16x16<f32, C>>,
    o3: ptr<function, coop_mat16x16<f32, C>>,
    o4: ptr<function, coop_mat16x16<f32, C>>,
    o5: ptr<function, coop_mat16x16<f32, C>>,
    o6: ptr<function, coop_mat16x16<f32, C>>,
    o7: ptr<function, coop_mat16x16<f32, C>>,
) {
    for (var kk = 0u; kk < KEYS; kk = kk + FRAG) {
        pv_step(r, kk, 0u, o0);
        if (FRAGS > 1u) {
            pv_step(r, kk, 1u, o1);
        }
        if (FRAGS > 2u) {
            pv_step(r, kk, 2u, o2);
        }
        if (FRAGS > 3u) {
            pv_step(r, kk, 3u, o3);
        }
        if (FRAGS > 4u) {
            pv_step(r, kk, 4u, o4);
        }
        if (FRAGS > 5u) {
            pv_step(r, kk, 5u, o5);
        }
        if (FRAGS > 6u) {
            pv_step(r, kk, 6u, o6);
        }
        if (FRAGS > 7u) {
            pv_step(r, kk, 7u, o7);
        }
    }
}

// `rescale` for every output fragment of the subgroup (the same number for every subgroup).
fn rescale_rows(
    r: u32,
    lane: u32,
    o0: ptr<function, coop_mat16x16<f32, C>>,
    o1: ptr<function, coop_mat16x16<f32, C>>,
    o2: ptr<function, coop_mat16x16<f32, C>>,
    o3: ptr<function, coop_mat16x16<f32, C>>,
    o4: ptr<function, coop_mat16x16<f32, C>>,
    o5: ptr<function, coop_mat16x16<f32, C>>,
    o6: ptr<function, coop_mat16x16<f32, C>>,
    o7: ptr<function, coop_mat16x16<f32, C>>,
) {
    rescale(o0, r, lane);
    if (FRAGS > 1u) {
        rescale(o1, r, lane);
    }
    if (FRAGS > 2u) {
        rescale(o2, r, lane);
    }
    if (FRAGS > 3u) {
        rescale(o3, r, lane);
    }
    if (FRAGS > 4u) {
        rescale(o4, r, lane);
    }
    if (FRAGS > 5u) {
        rescale(o5, r, lane);
    }
    if (FRAGS > 6u) {
        rescale(o6, r, lane);
    }
    if (FRAGS > 7u) {
        rescale(o7, r, lane);
    }
}

// Writes output fragment j of slots r..r+FRAG-1, divided by the row sums, through the
// subgroup's rows of s_tile. Called by every invocation (it has barriers).
fn emit(o: coop_mat16x16<f32, C>, r: u32, j: u32, lane: u32, first: u32, count: u32, group: u32, kv_head: u32) {
    let stride = LDS;
    let i0 = r * LDS;
    coopStoreT(o, &s_tile[i0], stride);
    workgroupBarrier();
    let used = count * group;
    for (var e = lane; e < FRAG * FRAG; e = e + SUBGROUP) {
        let s = r + e / FRAG;
        if (s < used) {
            let t = slot_row(s, first, count, group);
            let head = kv_head * group + s % group;
            out[(t * p.heads + head) * HEAD_DIM + j * FRAG + e % FRAG] = to_out(s_tile[s * LDS + e % FRAG] / row_sum[s]);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(INVOCATIONS)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let index = wg.x + wg.y * groups.x;
    if (index >= p.blocks * p.kv_heads) {
        return;
    }
    let block = blocks[index / p.kv_heads];
    let kv_head = index % p.kv_heads;
    let first = block.x;
    let count = block.y;
    let start = block.z;
    let end = first + count; // one past the last key any row of the block sees
    let keys_from = first_key(start, first);
    let group = p.heads / p.kv_heads;
    // This subgroup's FRAG slots.
    let r = sg * FRAG;
    // The slot, its query row and the part of each tile's keys this invocation's softmax
    // work is for (slot and part vary fastest within a subgroup).
    let slot = li / SPLIT;
    let part = li % SPLIT;
    let slot_t = slot_row(slot, first, count, group);

    for (var i = li; i < QUERIES * HD4; i = i + INVOCATIONS) {
        let s = i / HD4;
        let c = i % HD4;
        let t = slot_row(s, first, count, group);
        let qh = to_f16(q[(t * p.heads + kv_head * group + s % group) * HD4 + c]);
        q_tile[s * LDQ4 + c] = qh;
    }

    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    var o4 = coop_mat16x16<f32, C>();
    var o5 = coop_mat16x16<f32, C>();
    var o6 = coop_mat16x16<f32, C>();
    var o7 = coop_mat16x16<f32, C>();
    var my_sum = 0.0;
    if (ONE_PASS) {
        if (part == 0u) {
            row_sum[slot] = LOWEST;
        }
        for (var tile = keys_from; tile < end; tile = tile + KEYS) {
            let n = min(KEYS, end - tile);
            if (li == 0u) {
                rescale_flag = 0u;
            }
            stage_kv(li, tile, n, kv_head, true);
            workgroupBarrier();
            tile_scores(r);
            workgroupBarrier();
            var tile_max = LOWEST;
            for (var j = 0u; j < PART; j = j + 1u) {
                let key = part * PART + (j + slot) % PART;
                if (key < n && visible(tile + key, slot_t)) {
                    tile_max = max(tile_max, cap_score(s_tile[slot * LDS + key] * p.scale));
                }
            }
            partial[li] = tile_max;
            workgroupBarrier();
            for (var q = 0u; q < SPLIT; q = q + 1u) {
                tile_max = max(tile_max, partial[slot * SPLIT + q]);
            }
            // The reference moves only past the margin (from LOWEST at a slot's first key).
            let old = row_sum[slot];
            var reference = old;
            if (tile_max > old + RESCALE_MARGIN) {
                reference = tile_max;
                rescale_flag = 1u;
            }
            let factor = exp(old - reference);
            my_sum = my_sum * factor;
            // Every read of the maxima and references happens before they are replaced.
            workgroupBarrier();
            if (part == 0u) {
                row_sum[slot] = reference;
                partial[slot * SPLIT] = factor;
            }
            for (var j = 0u; j < PART; j = j + 1u) {
                let key = part * PART + (j + slot) % PART;
                var e = 0.0;
                if (key < n && visible(tile + key, slot_t)) {
                    e = exp(cap_score(s_tile[slot * LDS + key] * p.scale) - reference);
                }
                let eh = f16(e);
                p_tile[slot * LDP + key] = eh;
                my_sum = my_sum + f32(eh);
            }
            // (A barrier: the probabilities and factors are visible to every subgroup.)
            if (workgroupUniformLoad(&rescale_flag) != 0u) {
                rescale_rows(r, lane, &o0, &o1, &o2, &o3, &o4, &o5, &o6, &o7);
            }
            pv_tile(r, &o0, &o1, &o2, &o3, &o4, &o5, &o6, &o7);
            workgroupBarrier();
        }
    } else {
        // Pass 1: each slot's maximum over its keys.
        var my_max = LOWEST;
        for (var tile = keys_from; tile < end; tile = tile + KEYS) {
            let n = min(KEYS, end - tile);
            stage_kv(li, tile, n, kv_head, false);
            workgroupBarrier();
            tile_scores(r);
            workgroupBarrier();
            for (var j = 0u; j < PART; j = j + 1u) {
                let key = part * PART + (j + slot) % PART;
                if (key < n && visible(tile + key, slot_t)) {
                    my_max = max(my_max, cap_score(s_tile[slot * LDS + key] * p.scale));
                }
            }
            workgroupBarrier();
        }
        partial[li] = my_max;
        workgroupBarrier();
        var m = LOWEST;
        for (var q = 0u; q < SPLIT; q = q + 1u) {
            m = max(m, partial[slot * SPLIT + q]);
        }
        // Every read of the maxima happens before any sum is written over them.
        workgroupBarrier();

        // Pass 2: P = exp(S - max), O += P V.
        for (var tile = keys_from; tile < end; tile = tile + KEYS) {
            let n = min(KEYS, end - tile);
            stage_kv(li, tile, n, kv_head, true);
            workgroupBarrier();
            tile_scores(r);
            workgroupBarrier();
            for (var j = 0u; j < PART; j = j + 1u) {
                let key = part * PART + (j + slot) % PART;
                var e = 0.0;
                if (key < n && visible(tile + key, slot_t)) {
                    e = exp(cap_score(s_tile[slot * LDS + key] * p.scale) - m);
                }
                // The sum adds what P V multiplies: the f16 probabilities.
                let eh = f16(e);
                p_tile[slot * LDP + key] = eh;
                my_sum = my_sum + f32(eh);
            }
            workgroupBarrier();
            pv_tile(r, &o0, &o1, &o2, &o3, &o4, &o5, &o6, &o7);
            workgroupBarrier();
        }
    }
    partial[li] = my_sum;
    workgroupBarrier();
    if (part == 0u) {
        var sum = 0.0;
        for (var q = 0u; q < SPLIT; q = q + 1u) {
            sum = sum + partial[slot * SPLIT + q];
        }
        row_sum[slot] = sum;
    }
    workgroupBarrier();

    emit(o0, r, 0u, lane, first, count, group, kv_head);
    if (FRAGS > 1u) {
        emit(o1, r, 1u, lane, first, count, group, kv_head);
    }
    if (FRAGS > 2u) {
        emit(o2, r, 2u, lane, first, count, group, kv_head);
    }
    if (FRAGS > 3u) {
        emit(o3, r, 3u, lane, first, count, group, kv_head);
    }
    if (FRAGS > 4u) {
        emit(o4, r, 4u, lane, first, count, group, kv_head);
    }
    if (FRAGS > 5u) {
        emit(o5, r, 5u, lane, first, count, group, kv_head);
    }
    if (FRAGS > 6u) {
        emit(o6, r, 6u, lane, first, count, group, kv_head);
    }
    if (FRAGS > 7u) {
        emit(o7, r, 7u, lane, first, count, group, kv_head);
    }
}
