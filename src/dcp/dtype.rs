//! Tensor element types as PyTorch names them in a checkpoint.
//!
//! A dtype shows up twice: as a bare global in `.metadata` (`torch.bfloat16`)
//! and as the storage class inside each item's `data.pkl`
//! (`torch.BFloat16Storage`). Both map to one [`DType`].

use std::fmt;

use safetensors::Dtype as StDtype;

/// An element type a checkpoint can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `torch.bool`, one byte 0/1.
    Bool,
    /// `torch.uint8`.
    U8,
    /// `torch.int8`.
    I8,
    /// `torch.int16`.
    I16,
    /// `torch.int32`.
    I32,
    /// `torch.int64`.
    I64,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    BF16,
    /// `torch.float32`.
    F32,
    /// `torch.float64`.
    F64,
    /// `torch.float8_e4m3fn`.
    F8E4M3Fn,
    /// `torch.float8_e5m2`.
    F8E5M2,
    /// `torch.uint16`.
    U16,
    /// `torch.uint32`.
    U32,
    /// `torch.uint64`.
    U64,
}

/// (dtype, torch name, legacy storage class, bytes per element, safetensors dtype).
const TABLE: &[(DType, &str, &str, usize, StDtype)] = &[
    (DType::Bool, "bool", "BoolStorage", 1, StDtype::BOOL),
    (DType::U8, "uint8", "ByteStorage", 1, StDtype::U8),
    (DType::I8, "int8", "CharStorage", 1, StDtype::I8),
    (DType::I16, "int16", "ShortStorage", 2, StDtype::I16),
    (DType::I32, "int32", "IntStorage", 4, StDtype::I32),
    (DType::I64, "int64", "LongStorage", 8, StDtype::I64),
    (DType::F16, "float16", "HalfStorage", 2, StDtype::F16),
    (DType::BF16, "bfloat16", "BFloat16Storage", 2, StDtype::BF16),
    (DType::F32, "float32", "FloatStorage", 4, StDtype::F32),
    (DType::F64, "float64", "DoubleStorage", 8, StDtype::F64),
    (
        DType::F8E4M3Fn,
        "float8_e4m3fn",
        "Float8_e4m3fnStorage",
        1,
        StDtype::F8_E4M3,
    ),
    (
        DType::F8E5M2,
        "float8_e5m2",
        "Float8_e5m2Storage",
        1,
        StDtype::F8_E5M2,
    ),
    // Dtypes newer than the legacy storage classes are saved as an
    // UntypedStorage plus the dtype (`_rebuild_tensor_v3`); their class
    // names here are never seen.
    (DType::U16, "uint16", "UInt16Storage", 2, StDtype::U16),
    (DType::U32, "uint32", "UInt32Storage", 4, StDtype::U32),
    (DType::U64, "uint64", "UInt64Storage", 8, StDtype::U64),
];

/// Aliases PyTorch also pickles (`torch.half` is `torch.float16`, ...).
const ALIASES: &[(&str, DType)] = &[
    ("half", DType::F16),
    ("float", DType::F32),
    ("double", DType::F64),
    ("long", DType::I64),
    ("int", DType::I32),
    ("short", DType::I16),
];

impl DType {
    fn row(self) -> &'static (DType, &'static str, &'static str, usize, StDtype) {
        // Every variant has a row (a unit test checks it).
        TABLE.iter().find(|r| r.0 == self).unwrap_or(&TABLE[0])
    }

    /// Every dtype, in a fixed order.
    pub fn all() -> impl Iterator<Item = DType> {
        TABLE.iter().map(|r| r.0)
    }

    /// PyTorch's name: `bfloat16`, `float32`, `bool`, ...
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        self.row().3
    }

    /// The safetensors dtype with the same encoding.
    pub fn safetensors(self) -> StDtype {
        self.row().4
    }

    /// From a torch name (`torch.` prefix optional): `bfloat16`,
    /// `torch.float32`, `half`, ...
    ///
    /// ```
    /// use shmfetch::dcp::DType;
    /// assert_eq!(DType::from_torch_name("torch.bfloat16"), Some(DType::BF16));
    /// assert_eq!(DType::from_torch_name("half"), Some(DType::F16));
    /// assert_eq!(DType::from_torch_name("complex64"), None);
    /// ```
    pub fn from_torch_name(name: &str) -> Option<DType> {
        let name = name.strip_prefix("torch.").unwrap_or(name);
        TABLE
            .iter()
            .find(|r| r.1 == name)
            .map(|r| r.0)
            .or_else(|| ALIASES.iter().find(|a| a.0 == name).map(|a| a.1))
    }

    /// From a storage class (`torch.` prefix optional): `BFloat16Storage`.
    pub fn from_storage_class(name: &str) -> Option<DType> {
        let name = name.strip_prefix("torch.").unwrap_or(name);
        TABLE.iter().find(|r| r.2 == name).map(|r| r.0)
    }

    /// The `module.name` globals for every dtype (as `.metadata` pickles
    /// them) and every storage class (as item pickles do).
    pub(crate) fn globals() -> impl Iterator<Item = String> {
        TABLE
            .iter()
            .flat_map(|r| [format!("torch.{}", r.1), format!("torch.{}", r.2)])
            .chain(ALIASES.iter().map(|a| format!("torch.{}", a.0)))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips_through_both_names() {
        for d in DType::all() {
            assert_eq!(DType::from_torch_name(d.name()), Some(d));
            assert_eq!(DType::from_storage_class(d.row().2), Some(d));
            assert_eq!(d.row().0, d);
            assert!(d.size() >= 1);
        }
        assert_eq!(DType::all().count(), TABLE.len());
    }
}
