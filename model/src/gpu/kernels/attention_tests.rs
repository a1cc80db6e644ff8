//! FlashAttention and RowAttention against a plain f64 CPU reference, on whatever adapter
//! is present (lavapipe in CI), over packed batches of uneven sequences.

use super::*;
use crate::gpu::kernels::attention_check::AttentionProblem;
use crate::gpu::kernels::{BindCache, Recorder, read_buffer, validate_wgsl};
use crate::gpu::{AdapterChoice, Gpu, open_device};
use wgpu::util::DeviceExt;

fn gpu() -> Gpu {
    open_device(AdapterChoice::Any).expect("opening a wgpu device").expect("Any gives an adapter")
}

/// The tests' packed batches: the self-check's problem.
type Batch = AttentionProblem;

fn storage(gpu: &Gpu, data: &[u8]) -> wgpu::Buffer {
    let contents = if data.is_empty() { &[0u8; 16][..] } else { data };
    gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

/// Runs what `record` records and reads `out` back.
fn run<'k>(gpu: &Gpu, out: &wgpu::Buffer, record: impl FnOnce(&mut Recorder<'k>)) -> Vec<f32> {
    let mut rec = Recorder::new(&gpu.device);
    record(&mut rec);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let mut cache = BindCache::default();
    rec.encode(&gpu.device, &gpu.queue, &mut cache, &mut encoder, false).expect("encoding");
    let readback = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: out.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(out, 0, &readback, 0, out.size());
    gpu.queue.submit([encoder.finish()]);
    bytemuck::cast_slice(&read_buffer(&gpu.device, &readback).expect("reading back")).to_vec()
}

/// Output buffer filled with NaN, so that a row the kernel never writes fails the check.
fn output(gpu: &Gpu, batch: &Batch) -> wgpu::Buffer {
    storage(gpu, bytemuck::cast_slice(&vec![f32::NAN; batch.tokens() * batch.heads * batch.head_dim]))
}

fn run_flash(gpu: &Gpu, flash: &FlashAttention, batch: &Batch) -> Vec<f32> {
    let blocks = attention_blocks(&batch.starts, &batch.lengths, flash.block_rows(batch.heads, batch.kv_heads));
    assert!(
        blocks.len() <= max_blocks(batch.tokens(), batch.lengths.len(), flash.block_rows(batch.heads, batch.kv_heads))
    );
    let bytes = batch.run_flash(&gpu.device, &gpu.queue, flash).expect("running flash attention");
    bytemuck::cast_slice(&bytes).to_vec()
}

fn run_rows(gpu: &Gpu, rows: &RowAttention, batch: &Batch) -> Vec<f32> {
    let ranges: Vec<[u32; 2]> =
        batch.starts.iter().zip(&batch.lengths).flat_map(|(&s, &l)| (s..s + l).map(move |t| [s, t + 1])).collect();
    let (q, k, v) = (
        storage(gpu, bytemuck::cast_slice(&batch.q)),
        storage(gpu, bytemuck::cast_slice(&batch.k)),
        storage(gpu, bytemuck::cast_slice(&batch.v)),
    );
    let ranges_buffer = storage(gpu, bytemuck::cast_slice(&ranges));
    let out = output(gpu, batch);
    let params = AttentionParams {
        rows: batch.tokens() as u32,
        heads: batch.heads as u32,
        kv_heads: batch.kv_heads as u32,
        head_dim: batch.head_dim as u32,
        scale: batch.scale,
        softcap: batch.softcap.unwrap_or(0.0),
        window: window_param(batch.window),
        _pad: 0,
    };
    let keys = visible_pairs(&batch.lengths, batch.window);
    run(gpu, &out, |rec| rows.record(rec, params, &q, &k, &v, &ranges_buffer, &out, keys))
}

/// Within 1e-5 relative + 1e-6 absolute, element by element.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let error = (g - w).abs();
        assert!(error <= 1e-5 * w.abs() + 1e-6, "{what}: element {i} is {g}, want {w}");
        worst = worst.max(error);
    }
    eprintln!("{what}: {} values, max |error| {worst:e}", got.len());
}

const MIXED: &[u32] = &[1, 5, 17, 64, 100];

#[test]
fn flash_attention_matches_the_cpu_on_mixed_lengths() {
    let gpu = gpu();
    // (heads, kv_heads, head_dim): groups 1, 3, 4 and 3 again with an odd head size.
    for (heads, kv_heads, head_dim) in [(4, 4, 64), (9, 3, 64), (8, 2, 128), (6, 2, 80)] {
        let flash = FlashAttention::new(&gpu.device, head_dim).expect("compiling flash attention");
        let batch = Batch::new(MIXED, heads, kv_heads, head_dim);
        let what = format!("flash {heads}/{kv_heads} heads x {head_dim}, tiles {:?}", flash.tiles());
        assert_close(&run_flash(&gpu, &flash, &batch), &batch.reference(), &what);
    }
}

/// Sliding layers: windows of one key, of fewer keys than a tile, and of more, over
/// sequences shorter and longer than the window; on the default tiles and on small ones,
/// where whole key tiles fall before a block's window and are skipped.
#[test]
fn both_kernels_keep_to_a_sliding_window() {
    let gpu = gpu();
    let rows = RowAttention::new(&gpu.device).expect("compiling row attention");
    let small = FlashTiles { slices: 4, queries: 16, keys: 5, split_kv: true };
    let flashes = [
        FlashAttention::new(&gpu.device, 64).expect("compiling flash attention"),
        FlashAttention::with_tiles(&gpu.device, 64, small).expect("compiling flash attention"),
    ];
    let full = Batch::new(MIXED, 9, 3, 64).reference();
    for window in [1, 3, 7, 40, 99, 100] {
        let batch = Batch { window: Some(window), ..Batch::new(MIXED, 9, 3, 64) };
        let want = batch.reference();
        let moved = want.iter().zip(&full).any(|(a, b)| a != b);
        assert_eq!(moved, window < 100, "a window of {window} keys over sequences of up to 100");
        assert_close(&run_rows(&gpu, &rows, &batch), &want, &format!("row attention, window {window}"));
        for flash in &flashes {
            let what = format!("flash, window {window}, tiles {:?}", flash.tiles());
            assert_close(&run_flash(&gpu, flash, &batch), &want, &what);
        }
    }
    assert_eq!(visible_pairs(&[1, 5, 17], Some(4)), 1 + (10 + 4) + (10 + 13 * 4));
    assert_eq!(visible_pairs(&[1, 5, 17], None), 1 + 15 + 153);
}

#[test]
fn flash_attention_matches_row_attention() {
    let gpu = gpu();
    let rows = RowAttention::new(&gpu.device).expect("compiling row attention");
    for (heads, kv_heads, head_dim) in [(9, 3, 64), (8, 2, 128)] {
        let flash = FlashAttention::new(&gpu.device, head_dim).expect("compiling flash attention");
        let batch = Batch::new(MIXED, heads, kv_heads, head_dim);
        let by_rows = run_rows(&gpu, &rows, &batch);
        assert_close(&by_rows, &batch.reference(), "row attention");
        assert_close(&run_flash(&gpu, &flash, &batch), &by_rows, "flash vs row attention");
    }
}

/// Gemma2's soft cap, low enough here to flatten most rows' scores (q spans [-3, 3)).
#[test]
fn both_kernels_soft_cap_the_scores() {
    let gpu = gpu();
    let rows = RowAttention::new(&gpu.device).expect("compiling row attention");
    let flash = FlashAttention::new(&gpu.device, 64).expect("compiling flash attention");
    let uncapped = Batch::new(MIXED, 4, 2, 64);
    let batch = Batch { softcap: Some(0.5), ..Batch::new(MIXED, 4, 2, 64) };
    let reference = batch.reference();
    let moved = reference.iter().zip(uncapped.reference()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-2, "the cap must change the output for this test to mean anything ({moved})");
    assert_close(&run_rows(&gpu, &rows, &batch), &reference, "row attention, soft-capped");
    assert_close(&run_flash(&gpu, &flash, &batch), &reference, "flash attention, soft-capped");
}

#[test]
fn flash_attention_handles_a_long_sequence() {
    // A past kernel broke on lavapipe beyond 500 keys.
    let gpu = gpu();
    let flash = FlashAttention::new(&gpu.device, 64).expect("compiling flash attention");
    let batch = Batch::new(&[700, 3], 3, 1, 64);
    assert_close(&run_flash(&gpu, &flash, &batch), &batch.reference(), "flash, 700 tokens");
}

#[test]
fn flash_attention_tile_variants_agree() {
    let gpu = gpu();
    let tiles = |head_dim: usize, queries, keys, split_kv| FlashTiles {
        slices: head_dim.div_ceil(16) as u32,
        queries,
        keys,
        split_kv,
    };
    // (tiles, heads, kv_heads, lengths): shared and split K/V tiles, key tiles that are not
    // a multiple of the slices, one row per block (group 8 in 8 slots), head sizes 16 and 256.
    let cases = [
        (tiles(64, 8, 5, false), 8, 8, 64, MIXED),
        (tiles(64, 64, 32, true), 4, 1, 64, MIXED),
        (tiles(64, 16, 3, true), 3, 1, 64, &[0, 1, 2, 33][..]),
        (tiles(64, 8, 32, false), 8, 1, 64, &[9, 20][..]),
        (tiles(16, 32, 8, true), 6, 3, 16, MIXED),
        (tiles(72, 16, 10, false), 4, 2, 72, &[7, 30][..]),
        (tiles(256, 16, 14, false), 2, 1, 256, &[3, 40][..]),
    ];
    for (tiles, heads, kv_heads, head_dim, lengths) in cases {
        let flash = FlashAttention::with_tiles(&gpu.device, head_dim, tiles).expect("compiling flash attention");
        let batch = Batch::new(lengths, heads, kv_heads, head_dim);
        let what = format!("flash {heads}/{kv_heads} heads x {head_dim}, {lengths:?}, tiles {tiles:?}");
        assert_close(&run_flash(&gpu, &flash, &batch), &batch.reference(), &what);
    }
}

#[test]
fn tensor_core_flash_attention_validates_with_naga() {
    use wgpu::naga::valid::Capabilities as C;
    // What wgpu grants with SHADER_F16, SUBGROUP and EXPERIMENTAL_COOPERATIVE_MATRIX.
    let granted = C::COOPERATIVE_MATRIX | C::SHADER_FLOAT16 | C::SUBGROUP | C::SHADER_FLOAT16_IN_FLOAT32;
    for (fragment, head_dims, budget) in
        [(Fragment::Sixteen, [16, 64, 80, 128], 48 << 10), (Fragment::Eight, [8, 16, 40, 64], 32 << 10)]
    {
        let cores = TensorCores { fragment, fixed_subgroup: Some(fragment.side() as u32 * 2) };
        let source = cores.specialize("flash_attention_coop.wgsl", &flash_coop_source(Activations::F32)).unwrap();
        let half = cores.specialize("flash_attention_coop.wgsl", &flash_coop_source(Activations::F16)).unwrap();
        for head_dim in head_dims {
            assert!(flash_coop_supports_head_dim(head_dim, fragment), "{head_dim} on {fragment}");
            let name = format!("flash_attention_coop.wgsl for {fragment}");
            let default = validate_wgsl(&name, &source, granted, &[("HEAD_DIM", head_dim as f64)]);
            let loads_first =
                validate_wgsl(&name, &source, granted, &[("HEAD_DIM", head_dim as f64), ("LOADS_FIRST", 1.0)]);
            assert_ne!(default, loads_first, "LOADS_FIRST reaches {name}");
            let one_pass = validate_wgsl(&name, &source, granted, &[("HEAD_DIM", head_dim as f64), ("ONE_PASS", 1.0)]);
            assert_ne!(default, one_pass, "ONE_PASS reaches {name}");
            let half_out = validate_wgsl(&name, &half, granted, &[("HEAD_DIM", head_dim as f64)]);
            assert_ne!(default, half_out, "the f16 output reaches {name}");
            let bytes = flash_coop_workgroup_bytes(head_dim, fragment);
            assert!(bytes <= budget, "head size {head_dim} on {fragment}: {bytes} bytes must fit {budget}");
        }
    }
    // The 16x16 kernel's memory, as the shader declares it: 64 slots, 32 keys.
    assert_eq!(
        flash_coop_workgroup_bytes(64, Fragment::Sixteen),
        2 * 128 * 72 + 4 * 64 * 32 + 2 * 64 * 40 + 4 * (128 + 64) + 4
    );
    let refused = [(72, Fragment::Sixteen), (256, Fragment::Sixteen), (80, Fragment::Eight), (12, Fragment::Eight)];
    for (head_dim, fragment) in refused {
        assert!(!flash_coop_supports_head_dim(head_dim, fragment), "{head_dim} on {fragment}");
    }
}

/// The tensor-core kernel against the f64 reference, within what f16 inputs cost
/// (1e-2 absolute on outputs of size ~1), where the adapter offers it; elsewhere it says
/// it was skipped.
#[test]
fn tensor_core_flash_attention_matches_the_cpu_or_says_it_was_skipped() {
    let gpu = gpu();
    let Some(cores) = gpu.tensor_cores() else {
        eprintln!("SKIPPED: tensor-core flash attention on {}: no f16 cooperative matrices", gpu.info.name);
        return;
    };
    let side = cores.fragment.side();
    if let Err(why) = FlashAttention::tensor_cores(&gpu.device, cores, 4 * side, Activations::F32) {
        eprintln!("SKIPPED: tensor-core flash attention on {}: {why:#}", gpu.info.name);
        return;
    }
    // Groups 1, 3, 4 and 8; 1 to 8 output fragments per row (head sizes 16 to 128 with
    // 16x16 fragments, 8 to 64 with 8x8); a long sequence; one soft-capped case; sliding
    // windows shorter than a key tile, and longer, where whole tiles are skipped.
    // (heads, kv_heads, output fragments, lengths, soft cap, window)
    type Case = (usize, usize, usize, &'static [u32], Option<f32>, Option<usize>);
    let cases: [Case; 9] = [
        (4, 4, 4, MIXED, None, None),
        (9, 3, 4, MIXED, None, None),
        (8, 2, 8, MIXED, None, None),
        (6, 2, 3, &[0, 1, 2, 33], None, None),
        (8, 1, 1, &[700, 3], None, None),
        (4, 2, 8, MIXED, Some(0.5), None),
        (9, 3, 4, MIXED, None, Some(1)),
        (4, 2, 2, MIXED, Some(0.5), Some(7)),
        (8, 1, 1, &[700, 3], None, Some(100)),
    ];
    for (heads, kv_heads, fragments, lengths, softcap, window) in cases {
        let head_dim = fragments * side;
        let mut batch = Batch::new(lengths, heads, kv_heads, head_dim);
        batch.softcap = softcap;
        batch.window = window;
        let want = batch.reference();
        // The default, both ways of staging K and V (the same bytes), and one pass, with the
        // usual margin and rescaling at every new maximum.
        let default = FlashCoopOptions::new(Activations::F32);
        let variants = [
            ("", default),
            (", loads first", FlashCoopOptions { loads_first: true, ..default }),
            (", one pass", FlashCoopOptions { one_pass: true, ..default }),
            (", one pass, margin 0", FlashCoopOptions { one_pass: true, rescale_margin: 0.0, ..default }),
        ];
        let mut outputs = Vec::new();
        for (name, options) in variants {
            let flash = FlashAttention::tensor_cores_with(&gpu.device, cores, head_dim, options).unwrap();
            let got = run_flash(&gpu, &flash, &batch);
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            let what = format!(
                "tensor-core flash ({cores}{name}) {heads}/{kv_heads} heads x {head_dim}, {lengths:?}, cap {softcap:?}, window {window:?}"
            );
            assert!(worst <= 1e-2, "{what}: max |error| {worst:e}");
            eprintln!("{what}: max |error| {worst:e}");
            outputs.push(got);
        }
        assert_eq!(outputs[0], outputs[1], "loads-first staging changed the output");
        // Stored as f16 for an output projection reading f16 x: the f32 output rounded.
        let options = FlashCoopOptions::new(Activations::F16);
        let flash = FlashAttention::tensor_cores_with(&gpu.device, cores, head_dim, options).unwrap();
        let bytes: Vec<u8> = bytemuck::cast_slice(&run_flash(&gpu, &flash, &batch)).to_vec();
        let got = bytes[..outputs[0].len() * 2].chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let want = outputs[0].iter().map(|&v| half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_bits());
        assert!(got.eq(want), "{heads}/{kv_heads} heads x {head_dim}: the f16 output is not the f32 one rounded");
    }
}

#[test]
fn blocks_cover_every_row_once_within_its_sequence() {
    let lengths = [0u32, 1, 5, 17, 64, 100, 0, 33];
    let starts: Vec<u32> = lengths.iter().scan(0, |s, &l| Some(std::mem::replace(s, *s + l))).collect();
    let tokens = lengths.iter().sum::<u32>() as usize;
    for block_rows in [1, 2, 3, 8, 10, 21, 64, 1000] {
        let blocks = attention_blocks(&starts, &lengths, block_rows);
        let mut seen = vec![0; tokens];
        for &[first, rows, start, _] in &blocks {
            assert!(rows >= 1 && rows as usize <= block_rows);
            let i = starts.iter().zip(&lengths).position(|(&s, &l)| s <= first && first < s + l).expect("a sequence");
            assert_eq!(start, starts[i], "block starting at {first}");
            assert!(first + rows <= starts[i] + lengths[i], "block crosses its sequence's end");
            for row in first..first + rows {
                seen[row as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "rows covered once with {block_rows} rows per block");
        assert!(blocks.len() <= max_blocks(tokens, lengths.len(), block_rows));
    }
    // The bound is reached: one long sequence and the rest single tokens.
    let lengths = [1u32, 1, 1, 50];
    let starts = [0u32, 1, 2, 3];
    assert_eq!(attention_blocks(&starts, &lengths, 8).len(), max_blocks(53, 4, 8));
}

#[test]
fn tiles_fit_the_limits() {
    let large = wgpu::Limits {
        max_compute_workgroup_storage_size: 48 * 1024,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        ..Default::default()
    };
    for limits in [wgpu::Limits::default(), wgpu::Limits::downlevel_defaults(), large] {
        for head_dim in (4..=FLASH_MAX_HEAD_DIM).step_by(4) {
            let tiles = FlashTiles::choose(&limits, head_dim).expect("tiles for every head size");
            assert!(tiles.workgroup_bytes(head_dim) <= limits.max_compute_workgroup_storage_size as usize);
            assert!(tiles.workgroup() <= limits.max_compute_invocations_per_workgroup);
            assert!(tiles.queries as usize >= FLASH_MAX_GROUP && tiles.queries.is_multiple_of(4) && tiles.keys >= 1);
            assert!(tiles.keys <= 8 * tiles.slices);
        }
    }
    for head_dim in [0, 1, 66, 258, 260] {
        assert!(!flash_supports_head_dim(head_dim));
        assert!(FlashTiles::choose(&wgpu::Limits::default(), head_dim).is_err(), "head size {head_dim}");
    }
}

#[test]
fn flash_attention_refuses_what_it_cannot_do() {
    let gpu = gpu();
    assert!(FlashAttention::new(&gpu.device, 66).is_err(), "head sizes must be multiples of 4");
    let tiles = FlashTiles { slices: 4, queries: 10, keys: 8, split_kv: true };
    assert!(FlashAttention::with_tiles(&gpu.device, 64, tiles).is_err(), "query slots must be multiples of 4");
    let flash = FlashAttention::new(&gpu.device, 64).expect("compiling flash attention");
    assert!(flash.supports(9, 3) && flash.supports(32, 4) && flash.supports(8, 1));
    assert!(!flash.supports(9, 1) && !flash.supports(9, 2) && !flash.supports(4, 0));
}

/// Lavapipe timings for the README (not a test: `cargo test ... time_attention -- --ignored --nocapture`).
#[test]
#[ignore]
fn time_flash_against_row_attention() {
    let gpu = gpu();
    let cases = [(8, 512, None), (64, 128, None), (2, 4096, None), (2, 4096, Some(512))];
    for (sequences, length, window) in cases {
        let times = time_attention(&gpu, sequences, length, 9, 3, 64, window, 1).expect("timing");
        eprintln!("{times}");
    }
}

/// The on/off variables (`STEERLM_FLASH_LOADS_FIRST`, `STEERLM_FLASH_ONE_PASS`,
/// `STEERLM_F16_ACTIVATIONS`) take 0 or 1; anything else is named.
#[test]
fn switches_take_only_0_or_1() {
    use crate::gpu::kernels::switch;
    let name = "STEERLM_FLASH_ONE_PASS";
    assert_eq!(switch(name, None), Ok(false));
    assert_eq!(switch(name, Some("")), Ok(false));
    assert_eq!(switch(name, Some(" 0 ")), Ok(false));
    assert_eq!(switch(name, Some("1")), Ok(true));
    assert_eq!(switch(name, Some("yes")).unwrap_err(), "STEERLM_FLASH_ONE_PASS=\"yes\" is not 0 or 1");
}

/// The load-time check problem passes on every flash kernel this adapter runs (the f32 one
/// everywhere; the tensor-core one, with f32 and f16 output, where offered), with the
/// model's GQA group, scale and soft cap, and errors of the size each kernel's own test
/// allows. (A broken kernel fails it: checked by hand with a mis-scaled exponent in the
/// tensor-core shader, which the model then replaced with the f32 kernel, saying why.)
#[test]
fn flash_kernels_pass_their_load_time_check() {
    let gpu = gpu();
    let cases = [(1, 0.125, None), (4, 0.1, Some(0.5))];
    let head_dim = 64;
    let f32_flash = FlashAttention::new(&gpu.device, head_dim).unwrap();
    for (group, scale, softcap) in cases {
        let worst = f32_flash.self_check(&gpu.device, &gpu.queue, group, scale, softcap).unwrap();
        assert!(worst <= 1e-5, "f32 flash, group {group}: {worst:e}");
    }
    let Some(cores) = gpu.tensor_cores() else {
        eprintln!("SKIPPED: the tensor-core flash check on {}: no f16 cooperative matrices", gpu.info.name);
        return;
    };
    for output in [Activations::F32, Activations::F16] {
        let Ok(flash) = FlashAttention::tensor_cores(&gpu.device, cores, head_dim, output) else {
            eprintln!("SKIPPED: the tensor-core flash check on {}: it does not compile", gpu.info.name);
            return;
        };
        for (group, scale, softcap) in cases {
            let worst = flash.self_check(&gpu.device, &gpu.queue, group, scale, softcap).unwrap();
            assert!(
                worst <= FLASH_SELF_CHECK_TOLERANCE / 4.0,
                "tensor-core flash ({output:?}), group {group}: {worst:e}"
            );
            eprintln!("tensor-core flash ({cores}, {output:?} output) self-check, group {group}: {worst:.2e}");
        }
    }
}
