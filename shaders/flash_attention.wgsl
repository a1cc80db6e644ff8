// Causal attention for prefill over packed sequences with grouped KV heads, flash-attention
// style. One workgroup per (block of query rows, KV head). A block's rows all belong to one
// sequence (`blocks[i] = (first row, row count, sequence start, 0)`, built by the host), and
// the workgroup serves every query head of the KV head's group: its QUERIES query slots are
// (row, head) pairs, row-major, so K/V tiles staged in workgroup memory are shared by the
// block's rows and by the group's heads.
//
// Keys run from the sequence start to the block's last row (tiles above the causal diagonal
// are never loaded), KEYS at a time. Each query slot has SLICES invocations; invocation
// `slice` of a slot scores keys slice, slice + SLICES, .. of the tile, then owns output
// dimensions slice, slice + SLICES, .. (at most DIMS of them) and folds the tile into them
// with an online softmax (running max and sum), all in f32.
//
// Tile rows are padded by one float (HEAD_DIM + 1, KEYS + 1) so that the invocations of a
// warp read different banks. With SPLIT_KV the K and V tiles have their own storage and are
// loaded together; without it V overwrites K once the scores are taken (half the workgroup
// memory, one more barrier per tile).
//
// Query head h reads KV head h / (heads / kv_heads); token t of a sequence starting at s
// attends to keys s..=t, scaled by 1/sqrt(head_dim) (`p.scale`).

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    // Blocks in `blocks`; the dispatch has blocks * kv_heads workgroups.
    blocks: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [tokens, heads * HEAD_DIM], rotary applied.
@group(0) @binding(1) var<storage, read> q: array<f32>;
// [tokens, kv_heads * HEAD_DIM].
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
// (first query row, row count, sequence start, unused).
@group(0) @binding(4) var<storage, read> blocks: array<vec4<u32>>;
// [tokens, heads * HEAD_DIM].
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

override HEAD_DIM: u32 = 64u;
// Invocations per query slot: ceil(HEAD_DIM / DIMS).
override SLICES: u32 = 4u;
// (row, head) query slots per workgroup; the host's blocks have QUERIES / group rows.
override QUERIES: u32 = 32u;
// Keys per tile, at most SLICES * KEYS_PER_SLICE.
override KEYS: u32 = 32u;
override SPLIT_KV: bool = true;
// QUERIES * SLICES.
override WORKGROUP: u32 = 128u;

// Output dimensions per invocation: HEAD_DIM <= 16 * DIMS = 256.
const DIMS: u32 = 16u;
// Most keys one invocation scores per tile.
const KEYS_PER_SLICE: u32 = 8u;
// Below any real score, and far enough from -FLT_MAX that subtracting stays finite.
const LOWEST: f32 = -1.0e30;

override ROW: u32 = HEAD_DIM + 1u;
override V_OFFSET: u32 = select(0u, KEYS * ROW, SPLIT_KV);
override SCORE_ROW: u32 = KEYS + 1u;
override KV_FLOATS: u32 = select(1u, 2u, SPLIT_KV) * KEYS * ROW;
override SCORE_FLOATS: u32 = QUERIES * SCORE_ROW;

var<workgroup> kv: array<f32, KV_FLOATS>;
var<workgroup> scores: array<f32, SCORE_FLOATS>;

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
    let slot = lid / SLICES;
    let slice = lid % SLICES;
    let writes = slot < count * group;
    // Idle slots shadow the block's last row, so their arithmetic stays finite.
    let t = first + min(slot / group, count - 1u);
    let h = kv_head * group + slot % group;
    let q_base = t * p.heads * HEAD_DIM + h * HEAD_DIM;
    let kv_stride = p.kv_heads * HEAD_DIM;
    let kv_base = kv_head * HEAD_DIM;
    let score_base = slot * SCORE_ROW;

    var acc: array<f32, DIMS>;
    var m = LOWEST;
    var l = 0.0;
    for (var tile = start; tile < end; tile = tile + KEYS) {
        let n = min(KEYS, end - tile);
        for (var i = lid; i < n * HEAD_DIM; i = i + WORKGROUP) {
            let key = i / HEAD_DIM;
            let d = i % HEAD_DIM;
            let src = (tile + key) * kv_stride + kv_base + d;
            kv[key * ROW + d] = k[src];
            if (SPLIT_KV) {
                kv[V_OFFSET + key * ROW + d] = v[src];
            }
        }
        workgroupBarrier();

        // Scores of this slot against keys slice, slice + SLICES, .. of the tile. Keys past
        // `n` read the previous tile's (finite) values and are masked with the diagonal.
        var dots: array<f32, KEYS_PER_SLICE>;
        for (var d = 0u; d < HEAD_DIM; d = d + 1u) {
            let qd = q[q_base + d];
            for (var j = 0u; j < KEYS_PER_SLICE; j = j + 1u) {
                let key = slice + j * SLICES;
                if (key < KEYS) {
                    dots[j] = dots[j] + qd * kv[key * ROW + d];
                }
            }
        }
        for (var j = 0u; j < KEYS_PER_SLICE; j = j + 1u) {
            let key = slice + j * SLICES;
            if (key < KEYS) {
                scores[score_base + key] = select(LOWEST, dots[j] * p.scale, tile + key <= t);
            }
        }
        workgroupBarrier();

        if (!SPLIT_KV) {
            for (var i = lid; i < n * HEAD_DIM; i = i + WORKGROUP) {
                let key = i / HEAD_DIM;
                let d = i % HEAD_DIM;
                kv[key * ROW + d] = v[(tile + key) * kv_stride + kv_base + d];
            }
            workgroupBarrier();
        }

        var tile_max = m;
        for (var j = 0u; j < n; j = j + 1u) {
            tile_max = max(tile_max, scores[score_base + j]);
        }
        let correction = exp(m - tile_max);
        l = l * correction;
        for (var r = 0u; r < DIMS; r = r + 1u) {
            acc[r] = acc[r] * correction;
        }
        for (var j = 0u; j < n; j = j + 1u) {
            let weight = exp(scores[score_base + j] - tile_max);
            l = l + weight;
            let v_row = V_OFFSET + j * ROW;
            for (var r = 0u; r < DIMS; r = r + 1u) {
                let d = slice + r * SLICES;
                if (d < HEAD_DIM) {
                    acc[r] = acc[r] + weight * kv[v_row + d];
                }
            }
        }
        m = tile_max;
        workgroupBarrier();
    }

    if (writes) {
        for (var r = 0u; r < DIMS; r = r + 1u) {
            let d = slice + r * SLICES;
            if (d < HEAD_DIM) {
                out[q_base + d] = acc[r] / l;
            }
        }
    }
}
