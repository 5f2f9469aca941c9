//! Entry points for `cargo fuzz` (feature `fuzzing`, off by default): each
//! feeds arbitrary bytes to one parser of untrusted input and checks what
//! must hold of its result. Not part of the API; the fuzz targets in
//! `fuzz/` and the regression tests (inputs the fuzzer found, replayed from
//! `tests/fixtures/fuzz/`) both call these, so they test the same thing.

use std::io::Cursor;

#[cfg(feature = "dcp")]
use crate::dcp::{DType, Metadata, plan};
use crate::range::{parse_content_range, parse_range_header, parse_size};

/// A DCP `.metadata`: the safe pickle decoder and the mapping onto
/// [`Metadata`], then what `dcp ls` and a load plan do with it.
#[cfg(feature = "dcp")]
pub fn metadata(data: &[u8]) {
    let Ok(md) = Metadata::parse(data) else {
        return;
    };
    for (_, t) in md.tensors() {
        let _ = t.nbytes();
    }
    let _ = md.stored_bytes();
    let _ = md.files();
    let _ = serde_json::to_vec(&md);
    if let Ok(items) = plan(&md, &[]) {
        for it in items {
            assert!(it.offset.checked_add(it.length).is_some());
        }
    }
}

/// Dtypes a fuzzed item may claim, picked by the input's first byte.
#[cfg(feature = "dcp")]
const DTYPES: &[&str] = &[
    "torch.float32",
    "torch.bfloat16",
    "torch.int64",
    "torch.uint8",
    "torch.float8_e4m3fn",
    "torch.bool",
    "torch.float16",
];

/// A storage item (a `torch.save` zip) as a load decodes it. Input: one
/// byte choosing the dtype, one byte `r` for the rank (`r % 5`), `r`
/// dimensions of 2 bytes (little endian), then the archive.
#[cfg(feature = "dcp")]
pub fn item(data: &[u8]) {
    let [d, r, rest @ ..] = data else {
        return;
    };
    let rank = (*r % 5) as usize;
    if rest.len() < 2 * rank {
        return;
    }
    let (dims, zip) = rest.split_at(2 * rank);
    let sizes: Vec<u64> = dims
        .chunks(2)
        .map(|x| u64::from(u16::from_le_bytes([x[0], x[1]])))
        .collect();
    let Some(dtype) = DTYPES
        .get(*d as usize % DTYPES.len())
        .and_then(|n| DType::from_torch_name(n))
    else {
        return;
    };
    if let Ok(bytes) = crate::dcp::item::read_tensor_item(Cursor::new(zip), "fuzz", dtype, &sizes) {
        let numel: u64 = sizes.iter().product();
        assert_eq!(bytes.len() as u64, numel * dtype.size() as u64);
    }
}

/// `Content-Range`, `Range` and size parsing. The first byte picks the
/// parser; for `Range`, the next 8 bytes are the object size.
pub fn range(data: &[u8]) {
    let [which, rest @ ..] = data else {
        return;
    };
    match which % 3 {
        0 => {
            let s = String::from_utf8_lossy(rest);
            if let Some(cr) = parse_content_range(&s) {
                assert!(cr.range.start < cr.range.end);
                if let Some(total) = cr.total {
                    // Rendering and parsing again gives the same range.
                    let again = parse_content_range(&cr.range.to_content_range(total));
                    assert_eq!(again.map(|c| c.range), Some(cr.range));
                }
            }
        }
        1 => {
            let Some((size, s)) = rest.split_first_chunk::<8>() else {
                return;
            };
            let size = u64::from_le_bytes(*size);
            let s = String::from_utf8_lossy(s);
            if let Ok(r) = parse_range_header(&s, size) {
                assert!(r.start < r.end && r.end <= size, "{r:?} of {size}");
                // Rendering and parsing again gives the same range.
                assert_eq!(parse_range_header(&r.to_header(), size), Ok(r));
            }
        }
        _ => {
            let _ = parse_size(&String::from_utf8_lossy(rest));
        }
    }
}

/// AIStore's JSON error classification. Input: the status (2 bytes, little
/// endian), then the body.
pub fn ais_error(data: &[u8]) {
    classify_error(data, crate::source::aistore::classify_for_fuzzing);
}

/// Splits an error-classification input into status and body, classifies
/// it with `classify` and renders the error.
fn classify_error(data: &[u8], classify: fn(u16, &str) -> crate::Error) {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let e = classify(u16::from_le_bytes(*status), &String::from_utf8_lossy(body));
    let _ = e.to_string();
}

/// S3's XML error classification. Input: the status (2 bytes, little
/// endian), then the body. The message never carries the presigned URL.
pub fn s3_error(data: &[u8]) {
    classify_error(data, crate::source::s3::classify_for_fuzzing);
}
