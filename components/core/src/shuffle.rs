//! Python's `random.seed(n); random.shuffle(x)`, reproduced exactly.
//!
//! CPython seeds MT19937 with `init_by_array` over the 32-bit words of `abs(n)`, and
//! `shuffle` swaps `x[i]` with `x[randbelow(i + 1)]` for `i` from `len - 1` down to 1,
//! where `randbelow(n)` draws `n.bit_length()` bits until the value is below `n`.

use rand_mt::Mt;

/// The order Python's shuffle leaves `0..count` in: `order[k]` is the index of the item
/// that ends up at position `k`.
pub fn python_shuffle_order(count: u32, seed: u64) -> Vec<u32> {
    let key: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
    let mut rng = Mt::new_with_key(key.iter().copied());
    let mut order: Vec<u32> = (0..count).collect();
    for i in (1..count as usize).rev() {
        let j = rand_below(&mut rng, i as u32 + 1);
        order.swap(i, j as usize);
    }
    order
}

/// `Random._randbelow_with_getrandbits(n)` for `n >= 1`.
fn rand_below(rng: &mut Mt, n: u32) -> u32 {
    let bits = 32 - n.leading_zeros(); // n.bit_length()
    loop {
        // getrandbits(k) for k <= 32 keeps the top k bits of one output word.
        let r = rng.next_u32() >> (32 - bits);
        if r < n {
            return r;
        }
    }
}

/// `int(count * fraction)`: how many shuffled items go to train.
pub fn train_count(count: u64, fraction: f64) -> u64 {
    (count as f64 * fraction) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_cpython() {
        // python3 -c "import random; x=list(range(10)); random.seed(10); random.shuffle(x); print(x)"
        assert_eq!(python_shuffle_order(10, 10), vec![5, 2, 7, 1, 8, 4, 3, 6, 0, 9]);
        assert_eq!(python_shuffle_order(1, 10), vec![0]);
        assert!(python_shuffle_order(0, 10).is_empty());
        let long = python_shuffle_order(1000, 10);
        assert_eq!(long[..8], [627, 752, 993, 423, 388, 560, 983, 787]);
        assert_eq!(long[997..], [439, 33, 585]);
        // A seed wider than 32 bits seeds with two key words.
        assert_eq!(python_shuffle_order(70000, 12345678901)[..5], [52735, 25128, 66663, 57499, 36581]);
        assert_eq!(train_count(33, 0.95), 31);
    }
}
