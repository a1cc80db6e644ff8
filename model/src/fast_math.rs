//! A branch-free `exp` for the CPU path's hot loops (softmax and SiLU), written so the
//! compiler vectorises the loops that call it. Accurate to a few ulp over the range
//! that matters, far inside the 1e-4 tolerance against transformers, and several times
//! faster than calling libm's `expf` once per element.

/// e^x for f32, with Cody-Waite range reduction and a degree-6 polynomial; inputs are
/// clamped to [-87, 88] (below, the result is ~0; above, it saturates near f32::MAX).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest with the 1.5 * 2^23 trick: plain adds, so the loop vectorises
    // (`f32::round` is a libm call on baseline x86-64).
    const SHIFTER: f32 = 12_582_912.0;
    let n = (x * LOG2_E + SHIFTER) - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor terms of e^r on |r| <= ln2/2, in Horner form.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // Scale by 2^n through the exponent bits (n is in [-126, 127] after the clamp).
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    #[test]
    fn close_to_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (super::exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(super::exp(-1000.0), super::exp(-87.0));
        assert!(super::exp(0.0) == 1.0);
    }
}
