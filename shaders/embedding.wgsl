// out[t, :] = table[ids[t], :] for the ids inside this part of the table
// (`row_start .. row_start + rows`); a table larger than one storage binding is split
// into parts and gathered part by part. The table keeps its stored dtype.

struct Params {
    tokens: u32,
    hidden: u32,
    row_start: u32,
    rows: u32,
    // Multiplies every value: sqrt(hidden) for Gemma, else 1.
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// 0: f32, 1: bf16, 2: f16.
override DTYPE: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn load(e: u32) -> f32 {
    if (DTYPE == 0u) {
        return bitcast<f32>(table[e]);
    }
    let word = table[e / 2u];
    let high = (e & 1u) == 1u;
    if (DTYPE == 1u) {
        return select(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u), high);
    }
    let pair = unpack2x16float(word);
    return select(pair.x, pair.y, high);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * 256u;
    let t = index / p.hidden;
    if (t >= p.tokens) {
        return;
    }
    let id = ids[t];
    if (id < p.row_start || id >= p.row_start + p.rows) {
        return;
    }
    let d = index % p.hidden;
    out[index] = load((id - p.row_start) * p.hidden + d) * p.scale;
}
