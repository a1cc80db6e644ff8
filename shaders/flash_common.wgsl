// Parameters and input bindings shared by flash_attention.wgsl and
// flash_attention_coop.wgsl (kernels/attention.rs inserts this after each shader's
// directives). Each shader declares its own output at binding 5.

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    // Blocks in `blocks`; the dispatch has blocks * kv_heads workgroups.
    blocks: u32,
    scale: f32,
    // 0: none.
    softcap: f32,
    // A sliding layer's window: a query at position i sees keys i - window + 1 ..= i.
    // 0xffffffff: none (every earlier key).
    window: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [tokens, heads * HEAD_DIM], rotary applied.
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
// [tokens, kv_heads * HEAD_DIM].
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
// (first query row, row count, sequence start, unused).
@group(0) @binding(4) var<storage, read> blocks: array<vec4<u32>>;

// Whether query row `row` sees key row `key` (rows of one sequence): at or before it, and
// inside the window (the subtraction is only taken where key <= row).
fn visible(key: u32, row: u32) -> bool {
    return key <= row && row - key < p.window;
}

// The first key any row of a block from row `first` sees, in a sequence starting at row
// `start`: the start, or where the first row's window begins. Earlier key tiles are
// never loaded.
fn first_key(start: u32, first: u32) -> u32 {
    if (first + 1u > p.window) {
        return max(start, first + 1u - p.window);
    }
    return start;
}
