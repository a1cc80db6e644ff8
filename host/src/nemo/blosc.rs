//! Decompression of Blosc (version 1 format) buffers: zarr's default compressor, and so
//! the chunk format of Megatron's `zarr` distributed checkpoints (NeMo's
//! `model_weights/`). A buffer is a 16-byte header, then either the raw bytes or blocks
//! of (optionally split, then byte-shuffled) streams compressed with one codec.
//! lz4/lz4hc, zlib and zstd are read; blosclz and snappy are refused by name.

use anyhow::{Result, bail};

const MEMCPYED: u8 = 0x02;
const BYTE_SHUFFLE: u8 = 0x01;
const BIT_SHUFFLE: u8 = 0x04;
const DONT_SPLIT: u8 = 0x10;
/// c-blosc splits a block into one stream per byte of the type only for types of at
/// most this many bytes with at least `MIN_SPLIT_BUFFER` elements per block.
const MAX_SPLITS: usize = 16;
const MIN_SPLIT_BUFFER: usize = 128;

fn u32_at(bytes: &[u8], at: usize) -> Result<usize> {
    match bytes.get(at..at + 4) {
        Some(b) => Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize),
        None => bail!("truncated Blosc buffer"),
    }
}

/// The uncompressed bytes of one Blosc buffer; `expected` is the size the caller knows
/// the chunk must have (a mismatch is an error, never a short read).
pub fn decompress(buffer: &[u8], expected: usize) -> Result<Vec<u8>> {
    if buffer.len() < 16 {
        bail!("a Blosc buffer of {} bytes is shorter than its 16-byte header", buffer.len());
    }
    let (flags, typesize) = (buffer[2], (buffer[3] as usize).max(1));
    let nbytes = u32_at(buffer, 4)?;
    let blocksize = u32_at(buffer, 8)?;
    let cbytes = u32_at(buffer, 12)?;
    if nbytes != expected {
        bail!("the Blosc buffer holds {nbytes} bytes, the chunk needs {expected}");
    }
    if cbytes > buffer.len() {
        bail!("the Blosc buffer says it has {cbytes} bytes but {} are stored (truncated chunk)", buffer.len());
    }
    if flags & MEMCPYED != 0 {
        return match buffer.get(16..16 + nbytes) {
            Some(raw) => Ok(raw.to_vec()),
            None => bail!("truncated Blosc buffer (stored uncompressed)"),
        };
    }
    if flags & BIT_SHUFFLE != 0 {
        bail!("Blosc bit-shuffle is not supported (only byte shuffle)");
    }
    let codec = flags >> 5;
    if blocksize == 0 {
        return if nbytes == 0 { Ok(Vec::new()) } else { bail!("a Blosc buffer with block size 0") };
    }
    let blocks = nbytes.div_ceil(blocksize);
    let mut out = vec![0u8; nbytes];
    let mut scratch = vec![0u8; blocksize];
    for block in 0..blocks {
        let start = u32_at(buffer, 16 + 4 * block)?;
        let size = blocksize.min(nbytes - block * blocksize);
        let leftover = size < blocksize;
        let splits =
            if flags & DONT_SPLIT == 0 && !leftover && typesize <= MAX_SPLITS && size / typesize >= MIN_SPLIT_BUFFER {
                typesize
            } else {
                1
            };
        let stream_size = size / splits;
        let target = &mut scratch[..size];
        let mut at = start;
        for stream in 0..splits {
            let compressed = u32_at(buffer, at)?;
            at += 4;
            let Some(source) = buffer.get(at..at + compressed) else {
                bail!("a Blosc block runs past the end of the buffer (truncated chunk)");
            };
            at += compressed;
            let dest = &mut target[stream * stream_size..(stream + 1) * stream_size];
            if compressed == stream_size {
                dest.copy_from_slice(source);
            } else {
                decode(codec, source, dest)?;
            }
        }
        let out_block = &mut out[block * blocksize..block * blocksize + size];
        if flags & BYTE_SHUFFLE != 0 && typesize > 1 {
            unshuffle(typesize, target, out_block);
        } else {
            out_block.copy_from_slice(target);
        }
    }
    Ok(out)
}

/// Decodes one stream into exactly `dest.len()` bytes.
fn decode(codec: u8, source: &[u8], dest: &mut [u8]) -> Result<()> {
    let written = match codec {
        1 => lz4_flex::block::decompress_into(source, dest).map_err(|e| anyhow::anyhow!("lz4: {e}"))?,
        3 => {
            let mut inflater = flate2::Decompress::new(true);
            inflater.decompress(source, dest, flate2::FlushDecompress::Finish)?;
            inflater.total_out() as usize
        }
        4 => {
            use std::io::Read;
            let mut decoder =
                ruzstd::decoding::StreamingDecoder::new(source).map_err(|e| anyhow::anyhow!("zstd: {e}"))?;
            let mut written = 0;
            while written < dest.len() {
                let n = decoder.read(&mut dest[written..])?;
                if n == 0 {
                    break;
                }
                written += n;
            }
            written
        }
        0 => bail!("the chunk is compressed with blosclz, which steerlm does not read (lz4, zlib and zstd are read)"),
        2 => bail!("the chunk is compressed with snappy, which steerlm does not read (lz4, zlib and zstd are read)"),
        other => bail!("unknown Blosc codec {other}"),
    };
    if written != dest.len() {
        bail!("a Blosc stream decoded to {written} bytes, {} expected", dest.len());
    }
    Ok(())
}

/// Undoes Blosc's byte shuffle: byte j of every element was stored together; bytes past
/// the last whole element are stored as they were.
fn unshuffle(typesize: usize, shuffled: &[u8], out: &mut [u8]) {
    let elements = shuffled.len() / typesize;
    for j in 0..typesize {
        let lane = &shuffled[j * elements..(j + 1) * elements];
        for (i, &byte) in lane.iter().enumerate() {
            out[i * typesize + j] = byte;
        }
    }
    let whole = elements * typesize;
    out[whole..].copy_from_slice(&shuffled[whole..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Vec<u8> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nemo/blosc");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Every codec, shuffle and block layout numcodecs wrote decodes to its input.
    #[test]
    fn decodes_what_numcodecs_wrote() {
        for case in [
            "bf16_lz4_shuffle",
            "f32_lz4_shuffle_blocks",
            "f32_lz4hc_noshuffle",
            "bf16_zlib_shuffle_leftover",
            "bf16_zstd_shuffle",
            "tiny_memcpy",
        ] {
            let raw = fixture(&format!("{case}.raw"));
            assert_eq!(decompress(&fixture(&format!("{case}.blosc")), raw.len()).unwrap(), raw, "{case}");
        }
    }

    #[test]
    fn truncated_or_mismatched_chunks_are_errors() {
        let buffer = fixture("bf16_lz4_shuffle.blosc");
        for cut in [0, 10, 16, 100, buffer.len() / 2, buffer.len() - 1] {
            let e = decompress(&buffer[..cut], 40_000).unwrap_err().to_string();
            assert!(e.contains("truncated") || e.contains("shorter than its 16-byte header"), "cut {cut}: {e}");
        }
        let e = decompress(&buffer, 39_998).unwrap_err().to_string();
        assert!(e.contains("holds 40000 bytes, the chunk needs 39998"), "{e}");
        // A block offset pointing past the end.
        let mut corrupt = buffer.clone();
        corrupt[16..20].fill(0xff);
        assert!(decompress(&corrupt, 40_000).is_err());
    }
}
