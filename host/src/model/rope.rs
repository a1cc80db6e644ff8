//! The rotary-embedding table, computed on the CPU exactly as transformers does:
//! `inv_freq` and the angle `f32(pos) * inv_freq` rounded to f32, then an accurate
//! cos/sin. (WGSL's sin/cos are only good to about 2^-11, which moves scores by ~1e-2.)

use super::config::ModelConfig;

pub struct RopeTable {
    /// Rotated dimensions per head; the rest pass through.
    pub rotary_dim: usize,
    /// `[position][rotary_dim]`, laid out `cat(freqs, freqs)` (rotate_half).
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// `1 / theta^(2i / rotary_dim)` as HF computes it: every step in f32 (the power
/// rounded to f32, then the reciprocal).
pub fn inv_freq(theta: f64, rotary_dim: usize) -> Vec<f32> {
    (0..rotary_dim / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / rotary_dim as f32;
            1.0 / (theta as f32).powf(exponent)
        })
        .collect()
}

impl RopeTable {
    pub fn new(config: &ModelConfig, positions: usize) -> Self {
        let rot = config.rotary_dim;
        let inv = inv_freq(config.rope_theta, rot);
        let mut cos = Vec::with_capacity(positions * rot);
        let mut sin = Vec::with_capacity(positions * rot);
        for pos in 0..positions {
            let angles: Vec<f64> = inv.iter().map(|f| (pos as f32 * f) as f64).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| a.sin() as f32));
            }
        }
        RopeTable { rotary_dim: rot, cos, sin }
    }

    /// Rotates the first `rotary_dim` dims of each `head_dim`-sized head in `row`.
    pub fn apply(&self, row: &mut [f32], head_dim: usize, pos: usize) {
        let rot = self.rotary_dim;
        let half = rot / 2;
        let cos = &self.cos[pos * rot..(pos + 1) * rot];
        let sin = &self.sin[pos * rot..(pos + 1) * rot];
        for head in row.chunks_exact_mut(head_dim) {
            let mut rotated = [0f32; 512];
            for i in 0..rot {
                let other = if i < half { -head[i + half] } else { head[i - half] };
                rotated[i] = head[i] * cos[i] + other * sin[i];
            }
            head[..rot].copy_from_slice(&rotated[..rot]);
        }
    }
}
