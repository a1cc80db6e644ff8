// The score head reads one row per sequence: out[s, :] = x[rows[s], :], where rows[s]
// is the sequence's last token. The final norm and the score matmul then run on these
// rows only. Values are copied as bits (u32s), so the same kernel gathers rows of f16
// pairs (`hidden` counted in u32s).

struct Params {
    sequences: u32,
    hidden: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p.sequences * p.hidden) {
        return;
    }
    let s = i / p.hidden;
    out[i] = x[rows[s] * p.hidden + i % p.hidden];
}
