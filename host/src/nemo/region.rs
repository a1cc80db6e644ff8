//! Copying between blocks of an N-d array: the chunks a distributed checkpoint stores
//! and the region (a whole tensor, or one layer of a stacked one) an import reads.

/// An axis-aligned block of an array, `origin .. origin + shape` in the array's
/// coordinates, whose bytes are laid out in C order.
#[derive(Clone, Copy)]
pub struct Block<'a> {
    pub origin: &'a [usize],
    pub shape: &'a [usize],
}

impl Block<'_> {
    /// Element strides of the block's C-order layout.
    fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.shape.len()];
        for d in (0..self.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * self.shape[d + 1];
        }
        strides
    }
}

/// Copies the elements (`esize` bytes each) that `src` and `dst` share from `src`'s
/// bytes into `dst`'s, row by row; nothing when they do not overlap. Both blocks must
/// have the same rank and their bytes must be whole (callers check sizes first).
pub fn copy_overlap(src: &[u8], src_block: Block, dst: &mut [u8], dst_block: Block, esize: usize) {
    let rank = dst_block.shape.len();
    debug_assert_eq!(src_block.shape.len(), rank);
    if rank == 0 {
        dst[..esize].copy_from_slice(&src[..esize]);
        return;
    }
    let lo: Vec<usize> = (0..rank).map(|d| src_block.origin[d].max(dst_block.origin[d])).collect();
    let hi: Vec<usize> = (0..rank)
        .map(|d| (src_block.origin[d] + src_block.shape[d]).min(dst_block.origin[d] + dst_block.shape[d]))
        .collect();
    if (0..rank).any(|d| lo[d] >= hi[d]) {
        return;
    }
    let (src_strides, dst_strides) = (src_block.strides(), dst_block.strides());
    let run = (hi[rank - 1] - lo[rank - 1]) * esize;
    let mut index = lo.clone();
    loop {
        let at = |block: &Block, strides: &[usize]| -> usize {
            (0..rank).map(|d| (index[d] - block.origin[d]) * strides[d]).sum::<usize>() * esize
        };
        let (from, to) = (at(&src_block, &src_strides), at(&dst_block, &dst_strides));
        dst[to..to + run].copy_from_slice(&src[from..from + run]);
        // Next row: every dimension but the last, odometer style.
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < hi[d] {
                break;
            }
            index[d] = lo[d];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_only_the_overlap() {
        // A 2x3 block at (1, 1) of a 4x4 array, copied into the whole array.
        let src: Vec<u8> = (1..=6).collect();
        let mut dst = vec![0u8; 16];
        let whole = Block { origin: &[0, 0], shape: &[4, 4] };
        copy_overlap(&src, Block { origin: &[1, 1], shape: &[2, 3] }, &mut dst, whole, 1);
        assert_eq!(dst, [0, 0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 0, 0, 0]);
        // Row 2 of the array (its second row of the block), 2-byte elements.
        let src: Vec<u8> = (1..=12).collect();
        let mut row = vec![0u8; 8];
        let block = Block { origin: &[1, 1], shape: &[2, 3] };
        copy_overlap(&src, block, &mut row, Block { origin: &[2, 0], shape: &[1, 4] }, 2);
        assert_eq!(row, [0, 0, 7, 8, 9, 10, 11, 12]);
        // Disjoint blocks copy nothing.
        let mut untouched = vec![0u8; 4];
        copy_overlap(&src, block, &mut untouched, Block { origin: &[3, 0], shape: &[1, 4] }, 1);
        assert_eq!(untouched, [0; 4]);
    }
}
