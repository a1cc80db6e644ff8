//! The rotary-embedding table, computed on the CPU exactly as transformers does:
//! `inv_freq` and the angle `f32(pos) * inv_freq` rounded to f32, then an accurate
//! cos/sin. (WGSL's sin/cos are only good to about 2^-11, which moves scores by ~1e-2.)

use super::config::ModelConfig;
use rayon::prelude::*;

pub struct RopeTable {
    /// Rotated dimensions per head; the rest pass through.
    pub rotary_dim: usize,
    /// `[position][rotary_dim]`, laid out `cat(freqs, freqs)` (rotate_half).
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

/// How a checkpoint scales its rotary frequencies: `rope_type` in `rope_parameters`
/// (transformers 5.x) or in `rope_scaling` (4.x).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: none.
    None,
    /// `linear`: every frequency divided by `factor` (positions stretched by it).
    Linear { factor: f64 },
    /// `llama3` (Llama 3.1 and later): frequencies whose wavelength is past
    /// `original_context / low_freq_factor` divided by `factor`, those under
    /// `original_context / high_freq_factor` kept, and a smooth blend between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_context: f64 },
    /// `yarn` (Qwen's long-context setting, DeepSeek): each frequency blends its plain and
    /// `factor`-divided values along a ramp between the dimensions that turn `beta_fast` and
    /// `beta_slow` times over `original_context` tokens, and cos and sin are multiplied by
    /// `attention_factor`.
    Yarn { factor: f64, original_context: f64, beta_fast: f64, beta_slow: f64, truncate: bool, attention_factor: f64 },
}

impl RopeScaling {
    /// What cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
    pub fn attention_factor(self) -> f32 {
        match self {
            RopeScaling::Yarn { attention_factor, .. } => attention_factor as f32,
            _ => 1.0,
        }
    }
}

/// `1 / theta^(2i / rotary_dim)`, then the scaling, as transformers computes them: every
/// step in f32, in its order (a Python number meeting an f32 tensor is rounded to f32, and
/// `a / tensor` is `a * (1 / tensor)`), so the table matches it bit for bit.
pub fn inv_freq(theta: f64, rotary_dim: usize, scaling: RopeScaling) -> Vec<f32> {
    let plain = (0..rotary_dim / 2).map(|i| {
        let exponent = (2 * i) as f32 / rotary_dim as f32;
        1.0 / (theta as f32).powf(exponent)
    });
    match scaling {
        RopeScaling::None => plain.collect(),
        RopeScaling::Linear { factor } => plain.map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } => {
            let (factor, old) = (factor as f32, original_context as f32);
            let low_wavelength = (original_context / low_freq_factor) as f32;
            let high_wavelength = (original_context / high_freq_factor) as f32;
            let (low, span) = (low_freq_factor as f32, (high_freq_factor - low_freq_factor) as f32);
            plain
                .map(|f| {
                    let wavelength = (1.0 / f) * (2.0 * std::f64::consts::PI) as f32;
                    if wavelength > low_wavelength {
                        f / factor
                    } else if wavelength < high_wavelength {
                        f
                    } else {
                        let smooth = ((1.0 / wavelength) * old - low) / span;
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        RopeScaling::Yarn { factor, original_context, beta_fast, beta_slow, truncate, .. } => {
            // The dimension (of rotary_dim) that turns `rotations` times over the original
            // context, in f64 as Python computes it.
            let dim = rotary_dim as f64;
            let correction = |rotations: f64| {
                dim * (original_context / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
            if low == high {
                high += 0.001; // as transformers does, against a zero-width ramp
            }
            let (low32, span) = (low as f32, (high - low) as f32);
            (0..rotary_dim / 2)
                .map(|i| {
                    let exponent = (2 * i) as f32 / rotary_dim as f32;
                    let power = (theta as f32).powf(exponent);
                    let (extrapolated, interpolated) = (1.0 / power, 1.0 / (factor as f32 * power));
                    let ramp = ((i as f32 - low32) / span).clamp(0.0, 1.0);
                    let keep = 1.0 - ramp;
                    interpolated * (1.0 - keep) + extrapolated * keep
                })
                .collect()
        }
    }
}

impl RopeTable {
    pub fn new(config: &ModelConfig, positions: usize) -> Self {
        let rot = config.rotary_dim;
        let inv = inv_freq(config.rope_theta, rot, config.rope_scaling);
        let (mut cos, mut sin) = (vec![0f32; positions * rot], vec![0f32; positions * rot]);
        let scale = config.rope_scaling.attention_factor();
        // Rows in parallel: a 131k-token context is 8.4M angles, each cos and sin in f64.
        cos.par_chunks_mut(rot).zip(sin.par_chunks_mut(rot)).enumerate().for_each(|(pos, (cos, sin))| {
            for (i, f) in inv.iter().enumerate() {
                let angle = (pos as f32 * f) as f64;
                let (s, c) = angle.sin_cos();
                // As transformers: cos and sin in f32, then times the attention factor.
                let (c, s) = (c as f32 * scale, s as f32 * scale);
                (cos[i], cos[i + rot / 2]) = (c, c);
                (sin[i], sin[i + rot / 2]) = (s, s);
            }
        });
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
