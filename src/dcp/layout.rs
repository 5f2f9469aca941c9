//! Strided layouts: turning a saved storage into C-order bytes, and placing
//! a chunk into its full tensor.
//!
//! DCP saves dense tensors with their own strides (a `.t()` view,
//! channels-last), so a chunk's storage is in storage order; readers want
//! C order. Element bytes are copied whole: dtypes are little-endian on disk
//! and in the output, so no element is ever reinterpreted.

use crate::error::{Error, Result};

/// Visits every index of `shape` without its last dimension, in C order,
/// calling `f` with the index (`[]` once for 0-d and 1-d shapes). Nothing
/// is visited when any dimension is 0.
fn for_each_row(shape: &[u64], mut f: impl FnMut(&[u64])) {
    if shape.contains(&0) {
        return;
    }
    let outer = &shape[..shape.len().saturating_sub(1)];
    let mut idx = vec![0u64; outer.len()];
    loop {
        f(&idx);
        // Odometer increment.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < outer[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// C-order strides of `shape`, in elements (saturating at `u64::MAX` for
/// shapes whose element count overflows).
pub fn contiguous_strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1].saturating_mul(shape[d + 1]);
    }
    s
}

/// Bytes of `shape` with `elem`-byte elements, when that fits in memory.
fn byte_len(shape: &[u64], elem: usize) -> Option<usize> {
    shape
        .iter()
        .try_fold(elem as u64, |n, d| n.checked_mul(*d))
        .and_then(|n| usize::try_from(n).ok())
}

/// The C-order bytes of the tensor that views `storage` (elements of
/// `elem` bytes) with `shape`, `stride` and `storage_offset` (in elements).
///
/// # Errors
/// [`Error::Checkpoint`] (with `what`) when shape and stride differ in
/// length or the view reaches past the storage.
///
/// ```
/// use shmfetch::dcp::layout::to_c_order;
/// // A 2x3 tensor saved transposed: storage holds columns.
/// let storage = [1u8, 4, 2, 5, 3, 6];
/// let c = to_c_order(&storage, 1, &[2, 3], &[1, 2], 0, "t").unwrap();
/// assert_eq!(c, [1, 2, 3, 4, 5, 6]);
/// ```
pub fn to_c_order(
    storage: &[u8],
    elem: usize,
    shape: &[u64],
    stride: &[u64],
    storage_offset: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let bad = |d: String| Error::checkpoint(what, d);
    if shape.len() != stride.len() {
        return Err(bad(format!(
            "shape {shape:?} and stride {stride:?} differ in rank"
        )));
    }
    if shape.contains(&0) {
        return Ok(Vec::new());
    }
    let out_len =
        byte_len(shape, elem).ok_or_else(|| bad("tensor too large for this machine".into()))?;
    // Highest element index the view touches.
    let last = shape
        .iter()
        .zip(stride)
        .try_fold(storage_offset, |acc, (n, s)| {
            (n - 1).checked_mul(*s).and_then(|x| x.checked_add(acc))
        })
        .ok_or_else(|| bad("stride arithmetic overflows".into()))?;
    let storage_elems = (storage.len() / elem) as u64;
    if last >= storage_elems {
        return Err(bad(format!(
            "view (shape {shape:?}, stride {stride:?}, offset {storage_offset}) reaches element {last} of a {storage_elems}-element storage"
        )));
    }
    let so = storage_offset as usize * elem;
    if stride == contiguous_strides(shape).as_slice() {
        return Ok(storage[so..so + out_len].to_vec());
    }
    let mut out = Vec::with_capacity(out_len);
    let (inner_n, inner_s) = match (shape.last(), stride.last()) {
        (Some(n), Some(s)) => (*n as usize, *s as usize),
        _ => (1, 0), // 0-d: one element at the storage offset
    };
    let outer_strides = &stride[..stride.len().saturating_sub(1)];
    for_each_row(shape, |idx| {
        let base: u64 = storage_offset
            + idx
                .iter()
                .zip(outer_strides)
                .map(|(i, s)| i * s)
                .sum::<u64>();
        let base = base as usize * elem;
        if inner_s == 1 {
            out.extend_from_slice(&storage[base..base + inner_n * elem]);
        } else {
            for j in 0..inner_n {
                let at = base + j * inner_s * elem;
                out.extend_from_slice(&storage[at..at + elem]);
            }
        }
    });
    Ok(out)
}

/// [`to_c_order`] taking the storage by value: when it already is exactly
/// the C-order bytes (C strides, offset 0, no spare elements — how DCP saves
/// almost every tensor) it is handed back as is, without a copy.
///
/// # Errors
/// As [`to_c_order`].
pub fn into_c_order(
    storage: Vec<u8>,
    elem: usize,
    shape: &[u64],
    stride: &[u64],
    storage_offset: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let exact = storage_offset == 0
        && stride == contiguous_strides(shape).as_slice()
        && byte_len(shape, elem) == Some(storage.len());
    if exact {
        return Ok(storage);
    }
    to_c_order(&storage, elem, shape, stride, storage_offset, what)
}

/// Copies a chunk's C-order bytes into the C-order bytes of its full
/// tensor, at `offsets`.
///
/// # Errors
/// [`Error::Checkpoint`] when the chunk does not fit the tensor or its
/// byte count does not match its sizes.
///
/// ```
/// use shmfetch::dcp::layout::place_chunk;
/// // The right column half of a 2x4 tensor.
/// let mut full = vec![0u8; 8];
/// place_chunk(&mut full, &[2, 4], &[0, 2], &[2, 2], &[1, 2, 3, 4], 1, "w").unwrap();
/// assert_eq!(full, [0, 0, 1, 2, 0, 0, 3, 4]);
/// ```
pub fn place_chunk(
    full: &mut [u8],
    full_size: &[u64],
    offsets: &[u64],
    sizes: &[u64],
    chunk: &[u8],
    elem: usize,
    what: &str,
) -> Result<()> {
    let bad = |d: String| Error::checkpoint(what, d);
    let rank = full_size.len();
    let fits = offsets.len() == rank
        && sizes.len() == rank
        && (0..rank).all(|d| {
            offsets[d]
                .checked_add(sizes[d])
                .is_some_and(|e| e <= full_size[d])
        });
    if !fits {
        return Err(bad(format!(
            "chunk at {offsets:?} of size {sizes:?} does not fit the tensor {full_size:?}"
        )));
    }
    let need = byte_len(sizes, elem);
    if need != Some(chunk.len()) {
        return Err(bad(format!(
            "chunk has {} bytes, its sizes {sizes:?} need {}",
            chunk.len(),
            need.map_or("more than fit in memory".to_string(), |n| n.to_string())
        )));
    }
    if byte_len(full_size, elem) != Some(full.len()) {
        return Err(bad("full tensor buffer has the wrong length".into()));
    }
    if rank == 0 {
        full.copy_from_slice(chunk);
        return Ok(());
    }
    let fstrides = contiguous_strides(full_size);
    let row = sizes[rank - 1] as usize * elem;
    let mut src = 0usize;
    for_each_row(sizes, |idx| {
        let dst: u64 = (0..rank - 1)
            .map(|d| (offsets[d] + idx[d]) * fstrides[d])
            .sum::<u64>()
            + offsets[rank - 1];
        let dst = dst as usize * elem;
        full[dst..dst + row].copy_from_slice(&chunk[src..src + row]);
        src += row;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Element-by-element reference: index → storage position.
    fn naive(storage: &[u32], shape: &[u64], stride: &[u64], off: u64) -> Vec<u32> {
        let n: u64 = shape.iter().product();
        let cs = contiguous_strides(shape);
        (0..n)
            .map(|lin| {
                let mut pos = off;
                for d in 0..shape.len() {
                    pos += (lin / cs[d]) % shape[d] * stride[d];
                }
                storage[pos as usize]
            })
            .collect()
    }

    fn bytes(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    proptest! {
        #[test]
        fn any_permuted_layout_matches_the_reference(
            shape in prop::collection::vec(0u64..5, 0..5),
            perm_seed in any::<u64>(),
            off in 0u64..3,
        ) {
            // A dense tensor laid out in a random dimension order (what
            // .permute() / channels-last give), after `off` spare elements.
            let mut order: Vec<usize> = (0..shape.len()).collect();
            let mut s = perm_seed;
            for i in (1..order.len()).rev() {
                order.swap(i, (s % (i as u64 + 1)) as usize);
                s /= 7;
            }
            let mut stride = vec![0u64; shape.len()];
            let mut acc = 1;
            for &d in order.iter().rev() {
                stride[d] = acc;
                acc *= shape[d].max(1);
            }
            let numel: u64 = shape.iter().product();
            let storage: Vec<u32> = (0..(numel.max(1) + off + acc) as u32).collect();
            let got = to_c_order(&bytes(&storage), 4, &shape, &stride, off, "p").unwrap();
            prop_assert_eq!(got, bytes(&naive(&storage, &shape, &stride, off)));
        }

        #[test]
        fn chunks_tile_the_full_tensor(
            rows in 1u64..6, cols in 1u64..6, split_r in 0u64..6, split_c in 0u64..6,
        ) {
            let (sr, sc) = (split_r.min(rows), split_c.min(cols));
            let full_c: Vec<u8> = (0..rows * cols).map(|i| i as u8).collect();
            let mut full = vec![0xffu8; full_c.len()];
            for (r0, r1) in [(0, sr), (sr, rows)] {
                for (c0, c1) in [(0, sc), (sc, cols)] {
                    let chunk: Vec<u8> = (r0..r1)
                        .flat_map(|r| (c0..c1).map(move |c| (r * cols + c) as u8))
                        .collect();
                    place_chunk(&mut full, &[rows, cols], &[r0, c0], &[r1 - r0, c1 - c0], &chunk, 1, "t").unwrap();
                }
            }
            prop_assert_eq!(full, full_c);
        }
    }

    #[test]
    fn views_past_the_storage_are_errors() {
        let e = to_c_order(&[0u8; 4], 1, &[2, 2], &[2, 1], 1, "x").unwrap_err();
        assert!(e.to_string().contains("reaches element 4"), "{e}");
        assert!(to_c_order(&[0u8; 4], 1, &[2], &[1, 1], 0, "x").is_err());
        assert!(place_chunk(&mut [0u8; 4], &[2, 2], &[1, 0], &[2, 2], &[0; 4], 1, "x").is_err());
        assert!(place_chunk(&mut [0u8; 4], &[2, 2], &[0, 0], &[2, 2], &[0; 3], 1, "x").is_err());
    }

    #[test]
    fn zero_d_and_empty() {
        assert_eq!(to_c_order(&[9, 8], 2, &[], &[], 0, "s").unwrap(), [9, 8]);
        assert!(
            to_c_order(&[], 2, &[0, 3], &[3, 1], 0, "e")
                .unwrap()
                .is_empty()
        );
        let mut full = [0u8; 2];
        place_chunk(&mut full, &[], &[], &[], &[7, 7], 2, "s").unwrap();
        assert_eq!(full, [7, 7]);
    }
}
