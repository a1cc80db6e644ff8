// Causal attention for prefill over packed sequences with grouped KV heads, flash-attention
// style. One workgroup per (block of query rows, KV head). A block's rows all belong to one
// sequence (`blocks[i] = (first row, row count, sequence start, 0)`, built by the host), and
// the workgroup serves every query head of the KV head's group: its QUERIES query slots are
// (row, head) pairs, row-major, so the K/V tiles staged in workgroup memory are shared by
// the block's rows and by the group's heads.
//
// Keys run from the sequence start (or, in a sliding layer, the start of the first row's
// window) to the block's last row, KEYS at a time (tiles above the causal diagonal are never
// loaded). Per tile:
// 1. stage K (and V) as vec4 rows;
// 2. scores S = Q K^T * scale, masked at the diagonal: each invocation computes a register
//    block of ROWS query slots x up to KEYS_PER_SLICE keys (q read as vec4 from global
//    memory, k from the tile), so one vec4 load feeds several multiply-adds;
// 3. online softmax, one query slot per invocation: new running max, P = exp(S - max) in
//    place, the running sum, and the factor that rescales the slot's output so far;
// 4. O = O * factor + P V: each invocation keeps ROWS query slots x COLUMNS vec4 output
//    columns in registers (one scalar p and one vec4 of V feed four multiply-adds).
// All in f32. Invocation (group, slice) owns query slots group + i * GROUPS and columns
// slice + c * SLICES (strided: neighbouring invocations read neighbouring rows of the tile
// and write neighbouring vec4s). Tile rows are padded (one vec4 for K/V, one float for S)
// against bank conflicts. With SPLIT_KV the K and V tiles have their own storage and are
// loaded together; without it V overwrites K once the scores are taken (less workgroup
// memory, a second pass over global memory per tile).
//
// HEAD_DIM must be a multiple of 4 and at most 16 * SLICES (<= 256). Query head h reads KV
// head h / (heads / kv_heads); token t of a sequence starting at s attends to keys s..=t
// (the last `p.window` of them in a sliding layer),
// scaled by `p.scale` (1/sqrt(head_dim), or Gemma2's query_pre_attn_scalar^-0.5) and
// soft-capped where `p.softcap` > 0.

// [tokens, heads * HEAD_DIM].
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

// Gemma2's attention soft cap, `softcap * tanh(s / softcap)`, when `softcap` > 0. The clamp
// keeps tanh's exp-based evaluation from overflowing; tanh(10) is 1.0 in f32 already.
fn cap_score(s: f32) -> f32 {
    if (p.softcap > 0.0) {
        return p.softcap * tanh(clamp(s / p.softcap, -10.0, 10.0));
    }
    return s;
}

override HEAD_DIM: u32 = 64u;
// Invocations per group of ROWS query slots: ceil(HEAD_DIM / (4 * COLUMNS)).
override SLICES: u32 = 4u;
// (row, head) query slots per workgroup, a multiple of ROWS; blocks have QUERIES / group rows.
override QUERIES: u32 = 64u;
// Keys per tile, at most SLICES * KEYS_PER_SLICE.
override KEYS: u32 = 32u;
override SPLIT_KV: bool = true;
// QUERIES / ROWS * SLICES.
override WORKGROUP: u32 = 64u;

// Query slots per invocation.
const ROWS: u32 = 4u;
// vec4 output columns per invocation.
const COLUMNS: u32 = 4u;
// Most keys one invocation scores per tile.
const KEYS_PER_SLICE: u32 = 8u;
// Below any real score, and far enough from -FLT_MAX that subtracting stays finite.
const LOWEST: f32 = -1.0e30;

override HD4: u32 = HEAD_DIM / 4u;
override ROW4: u32 = HD4 + 1u;
override GROUPS: u32 = QUERIES / ROWS;
override V_OFFSET: u32 = select(0u, KEYS * ROW4, SPLIT_KV);
override KV_VEC4S: u32 = select(1u, 2u, SPLIT_KV) * KEYS * ROW4;
override SCORE_ROW: u32 = KEYS + 1u;
override SCORE_FLOATS: u32 = QUERIES * SCORE_ROW;

var<workgroup> kv: array<vec4<f32>, KV_VEC4S>;
// Scores, then probabilities, of the tile: [QUERIES, KEYS] (rows padded).
var<workgroup> scores: array<f32, SCORE_FLOATS>;
// Per query slot: running max and sum, and this tile's rescaling factor.
var<workgroup> row_max: array<f32, QUERIES>;
var<workgroup> row_sum: array<f32, QUERIES>;
var<workgroup> row_factor: array<f32, QUERIES>;

@compute @workgroup_size(WORKGROUP)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
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
    let group = p.heads / p.kv_heads;
    let used = count * group;

    let qgroup = lid / SLICES;
    let slice = lid % SLICES;
    // This invocation's query slots: their query row, and where their q and out start.
    var slots: array<u32, ROWS>;
    var rows: array<u32, ROWS>;
    var bases: array<u32, ROWS>;
    for (var i = 0u; i < ROWS; i = i + 1u) {
        let slot = qgroup + i * GROUPS;
        // Idle slots shadow the block's last row, so their arithmetic stays finite.
        let t = first + min(slot / group, count - 1u);
        slots[i] = slot;
        rows[i] = t;
        bases[i] = (t * p.heads + kv_head * group + slot % group) * HD4;
    }
    for (var r = lid; r < QUERIES; r = r + WORKGROUP) {
        row_max[r] = LOWEST;
        row_sum[r] = 0.0;
    }
    let kv_stride = p.kv_heads * HD4;
    let kv_base = kv_head * HD4;

    var acc: array<vec4<f32>, ROWS * COLUMNS>;
    for (var tile = first_key(start, first); tile < end; tile = tile + KEYS) {
        let n = min(KEYS, end - tile);
        for (var i = lid; i < n * HD4; i = i + WORKGROUP) {
            let key = i / HD4;
            let c = i % HD4;
            let src = (tile + key) * kv_stride + kv_base + c;
            kv[key * ROW4 + c] = k[src];
            if (SPLIT_KV) {
                kv[V_OFFSET + key * ROW4 + c] = v[src];
            }
        }
        workgroupBarrier();

        // Scores of slots x keys slice, slice + SLICES, .. . Keys past `n` read the
        // previous tile's (finite) values and are masked with the diagonal, as are keys
        // outside a sliding window.
        var dots: array<f32, ROWS * KEYS_PER_SLICE>;
        for (var c = 0u; c < HD4; c = c + 1u) {
            var qv: array<vec4<f32>, ROWS>;
            for (var i = 0u; i < ROWS; i = i + 1u) {
                qv[i] = q[bases[i] + c];
            }
            for (var j = 0u; j < KEYS_PER_SLICE; j = j + 1u) {
                let key = slice + j * SLICES;
                if (key < KEYS) {
                    let kc = kv[key * ROW4 + c];
                    for (var i = 0u; i < ROWS; i = i + 1u) {
                        dots[i * KEYS_PER_SLICE + j] = dots[i * KEYS_PER_SLICE + j] + dot(qv[i], kc);
                    }
                }
            }
        }
        for (var j = 0u; j < KEYS_PER_SLICE; j = j + 1u) {
            let key = slice + j * SLICES;
            if (key < KEYS) {
                for (var i = 0u; i < ROWS; i = i + 1u) {
                    let s = select(LOWEST, cap_score(dots[i * KEYS_PER_SLICE + j] * p.scale), visible(tile + key, rows[i]));
                    scores[slots[i] * SCORE_ROW + key] = s;
                }
            }
        }
        workgroupBarrier();

        if (!SPLIT_KV) {
            for (var i = lid; i < n * HD4; i = i + WORKGROUP) {
                let key = i / HD4;
                let c = i % HD4;
                kv[key * ROW4 + c] = v[(tile + key) * kv_stride + kv_base + c];
            }
        }
        // Online softmax, one slot per invocation.
        for (var r = lid; r < QUERIES; r = r + WORKGROUP) {
            let base = r * SCORE_ROW;
            let old = row_max[r];
            var m = old;
            for (var j = 0u; j < n; j = j + 1u) {
                m = max(m, scores[base + j]);
            }
            var sum = 0.0;
            for (var j = 0u; j < n; j = j + 1u) {
                // Masked keys weigh nothing, also in a slot's first tiles of a sliding
                // layer, which may have no key it sees (and a maximum still at LOWEST).
                let e = select(0.0, exp(scores[base + j] - m), scores[base + j] > LOWEST);
                scores[base + j] = e;
                sum = sum + e;
            }
            let factor = exp(old - m);
            row_factor[r] = factor;
            row_sum[r] = row_sum[r] * factor + sum;
            row_max[r] = m;
        }
        workgroupBarrier();

        for (var i = 0u; i < ROWS; i = i + 1u) {
            let factor = row_factor[slots[i]];
            for (var c = 0u; c < COLUMNS; c = c + 1u) {
                acc[i * COLUMNS + c] = acc[i * COLUMNS + c] * factor;
            }
        }
        for (var j = 0u; j < n; j = j + 1u) {
            var pj: array<f32, ROWS>;
            for (var i = 0u; i < ROWS; i = i + 1u) {
                pj[i] = scores[slots[i] * SCORE_ROW + j];
            }
            let v_row = V_OFFSET + j * ROW4;
            for (var c = 0u; c < COLUMNS; c = c + 1u) {
                let column = slice + c * SLICES;
                if (column < HD4) {
                    let vc = kv[v_row + column];
                    for (var i = 0u; i < ROWS; i = i + 1u) {
                        acc[i * COLUMNS + c] = acc[i * COLUMNS + c] + pj[i] * vc;
                    }
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < ROWS; i = i + 1u) {
        if (slots[i] < used) {
            let inverse = 1.0 / row_sum[slots[i]];
            for (var c = 0u; c < COLUMNS; c = c + 1u) {
                let column = slice + c * SLICES;
                if (column < HD4) {
                    out[bases[i] + column] = acc[i * COLUMNS + c] * inverse;
                }
            }
        }
    }
}
