//! Where a DCP writer puts each rank's files: the prefix strategies of the
//! S3 connector for PyTorch 1.5.0 (`s3torchconnector.dcp`), prefix for
//! prefix.
//!
//! S3 spreads request load by key prefix, so a checkpoint written by many
//! ranks at once is faster when each rank's files start with a different
//! prefix. The writer names rank `r`'s files `{prefix(r)}{n}.distcp`
//! (torch's `FileSystemWriter` appends the file number), e.g.
//! `0100000000/epoch_3/__2_0.distcp`.
//!
//! | strategy | constructor | rank 2's prefix |
//! |---|---|---|
//! | `DefaultPrefixStrategy` | [`PrefixStrategy::default_strategy`] | `__2_` |
//! | `BinaryPrefixStrategy(prefix_count=4)` | [`PrefixStrategy::binary`] | `0100000000/__2_` |
//! | `HexPrefixStrategy(epoch_num=3, prefix_count=20)` | [`PrefixStrategy::hex`] | `2000000000/epoch_3/__2_` |
//! | `NumericPrefixStrategy` (base 2 to 36) | [`PrefixStrategy::numeric`] | base 10, count 8: `2000000000/__2_` |
//! | `RoundRobinPrefixStrategy(["a", "b"])` | [`PrefixStrategy::round_robin`] | `a/__2_` |
//!
//! `tests/fixtures/prefix_strategies.tsv`, made by the package itself
//! (`scripts/gen-prefix-table.sh`), is checked row by row by this module's
//! tests, refusals included.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Digits of the numeric strategies: `0-9`, then lower-case letters (the
/// package's hex digits are lower-case).
const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The package's default `min_prefix_length`.
const DEFAULT_MIN_PREFIX_LENGTH: usize = 10;

/// The longest `min_prefix_length` accepted: an S3 key is at most 1024
/// bytes, so a longer prefix could never be written (the package takes
/// any length).
const MAX_PREFIX_LENGTH: usize = 1024;

/// How each rank's checkpoint files are prefixed; see the [module
/// docs](self).
///
/// Every strategy ends a prefix with `__{rank}_`; the numeric ones and
/// round-robin put `{part}/` and, with an epoch, `epoch_{epoch}/` before it.
///
/// ```
/// use shmfetch::dcp::PrefixStrategy;
///
/// let s = PrefixStrategy::default();
/// assert_eq!(s.prefix(3), "__3_");
///
/// // BinaryPrefixStrategy(prefix_count=4): the rank's slot (rank % 4) in
/// // binary, least-significant digit first, padded to min_prefix_length (10).
/// let s = PrefixStrategy::binary(None, 10, 4)?;
/// assert_eq!(s.prefix(0), "0000000000/__0_");
/// assert_eq!(s.prefix(1), "1000000000/__1_");
/// assert_eq!(s.prefix(2), "0100000000/__2_");
/// assert_eq!(s.prefix(3), "1100000000/__3_");
/// assert_eq!(s.prefix(4), "0000000000/__4_");
///
/// // BinaryPrefixStrategy(epoch_num=7, min_prefix_length=3, prefix_count=5)
/// let s = PrefixStrategy::binary(Some(7), 3, 5)?;
/// assert_eq!(s.prefix(4), "001/epoch_7/__4_");
/// assert_eq!(s.prefix(5), "000/epoch_7/__5_");
///
/// // HexPrefixStrategy(prefix_count=20)
/// let s = PrefixStrategy::hex(None, 10, 20)?;
/// assert_eq!(s.prefix(15), "f000000000/__15_");
/// assert_eq!(s.prefix(16), "0100000000/__16_");
/// assert_eq!(s.prefix(19), "3100000000/__19_");
/// assert_eq!(s.prefix(20), "0000000000/__20_");
///
/// // HexPrefixStrategy(epoch_num=0, min_prefix_length=1, prefix_count=300):
/// // 300 slots need 3 hex digits, more than min_prefix_length.
/// let s = PrefixStrategy::hex(Some(0), 1, 300)?;
/// assert_eq!(s.prefix(255), "ff0/epoch_0/__255_");
/// assert_eq!(s.prefix(256), "001/epoch_0/__256_");
/// assert_eq!(s.prefix(299), "b21/epoch_0/__299_");
///
/// // The module's table: HexPrefixStrategy(epoch_num=3, prefix_count=20),
/// // and base 10 with 8 prefixes.
/// assert_eq!(PrefixStrategy::hex(Some(3), 10, 20)?.prefix(2), "2000000000/epoch_3/__2_");
/// assert_eq!(PrefixStrategy::numeric(10, None, 10, 8)?.prefix(2), "2000000000/__2_");
///
/// // RoundRobinPrefixStrategy(["fast", "slow"], epoch_num=2)
/// let s = PrefixStrategy::round_robin(vec!["fast".into(), "slow".into()], Some(2))?;
/// assert_eq!(s.prefix(0), "fast/epoch_2/__0_");
/// assert_eq!(s.prefix(3), "slow/epoch_2/__3_");
///
/// // What the package refuses, refused here too:
/// assert!(PrefixStrategy::binary(None, 0, 4).is_err()); // min_prefix_length < 1
/// assert!(PrefixStrategy::hex(None, 10, 0).is_err()); // prefix_count < 1
/// assert!(PrefixStrategy::round_robin(vec![], None).is_err());
/// # Ok::<(), shmfetch::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrefixStrategy {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Kind {
    #[default]
    Default,
    Numeric {
        base: u32,
        epoch: Option<u64>,
        min_prefix_length: usize,
        prefix_count: usize,
        /// Digits in every prefix: max(minimal L, min_prefix_length).
        length: usize,
    },
    RoundRobin {
        prefixes: Vec<String>,
        epoch: Option<u64>,
    },
}

impl PrefixStrategy {
    /// `DefaultPrefixStrategy`: `__{rank}_`, no directory.
    pub fn default_strategy() -> PrefixStrategy {
        PrefixStrategy::default()
    }

    /// `NumericPrefixStrategy(base, epoch_num, min_prefix_length,
    /// prefix_count)`: rank `r` gets slot `r % prefix_count`, written in
    /// `base` with `L` digits, least-significant digit first, where `L` is
    /// the smallest length with `base^L >= prefix_count`, at least
    /// `min_prefix_length`. Digits are `0-9a-z` (base 16 is the package's
    /// `HexPrefixStrategy`, base 2 its `BinaryPrefixStrategy`).
    ///
    /// The package gives `prefix_count` the world size when
    /// `torch.distributed` is initialised, else 1 (every rank the same
    /// prefix); here it is always given. Its default `min_prefix_length` is
    /// 10.
    ///
    /// Prefixes are computed per call, not listed: any `prefix_count` up to
    /// `usize::MAX` costs nothing.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `min_prefix_length` or `prefix_count`
    /// is 0 (the package's refusals), `base` is not 2 to 36 (the package
    /// does not check it: base 1 with more than one prefix never returns),
    /// or `min_prefix_length` is over 1024, the length of the longest S3
    /// key.
    pub fn numeric(
        base: u32,
        epoch: Option<u64>,
        min_prefix_length: usize,
        prefix_count: usize,
    ) -> Result<PrefixStrategy> {
        if !(2..=36).contains(&base) {
            return Err(Error::InvalidConfig(format!(
                "prefix strategy: base must be 2 to 36, got {base}"
            )));
        }
        if min_prefix_length < 1 {
            return Err(Error::InvalidConfig(format!(
                "prefix strategy: min_prefix_length must be a positive integer, got {min_prefix_length}"
            )));
        }
        if min_prefix_length > MAX_PREFIX_LENGTH {
            return Err(Error::InvalidConfig(format!(
                "prefix strategy: min_prefix_length must be at most {MAX_PREFIX_LENGTH} (an S3 key's \
                 longest), got {min_prefix_length}"
            )));
        }
        if prefix_count < 1 {
            return Err(Error::InvalidConfig(format!(
                "prefix strategy: prefix_count must be a positive integer, got {prefix_count}"
            )));
        }
        // The smallest L with base^L >= prefix_count. Once base^L would
        // overflow it is past usize::MAX >= prefix_count: L is enough.
        let mut length = 1;
        let mut size = base as usize;
        while size < prefix_count {
            length += 1;
            match size.checked_mul(base as usize) {
                Some(s) => size = s,
                None => break,
            }
        }
        let length = length.max(min_prefix_length);
        Ok(PrefixStrategy {
            kind: Kind::Numeric {
                base,
                epoch,
                min_prefix_length,
                prefix_count,
                length,
            },
        })
    }

    /// `BinaryPrefixStrategy(epoch_num, min_prefix_length, prefix_count)`:
    /// [`numeric`](Self::numeric) in base 2.
    ///
    /// # Errors
    /// As [`numeric`](Self::numeric).
    pub fn binary(
        epoch: Option<u64>,
        min_prefix_length: usize,
        prefix_count: usize,
    ) -> Result<PrefixStrategy> {
        PrefixStrategy::numeric(2, epoch, min_prefix_length, prefix_count)
    }

    /// `HexPrefixStrategy(epoch_num, min_prefix_length, prefix_count)`:
    /// [`numeric`](Self::numeric) in base 16, lower-case digits.
    ///
    /// # Errors
    /// As [`numeric`](Self::numeric).
    pub fn hex(
        epoch: Option<u64>,
        min_prefix_length: usize,
        prefix_count: usize,
    ) -> Result<PrefixStrategy> {
        PrefixStrategy::numeric(16, epoch, min_prefix_length, prefix_count)
    }

    /// `RoundRobinPrefixStrategy(user_prefixes, epoch_num)`: rank `r` gets
    /// `prefixes[r % prefixes.len()]`, followed by `/` — used as given, so
    /// `"a/"` makes `a//__0_` (a key with an empty segment): leave the
    /// slash out.
    ///
    /// The epoch is an integer here as for the numeric strategies (the
    /// package does not check round-robin's epoch at all).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty list (the package's refusal).
    pub fn round_robin(prefixes: Vec<String>, epoch: Option<u64>) -> Result<PrefixStrategy> {
        if prefixes.is_empty() {
            return Err(Error::InvalidConfig(
                "prefix strategy: the round-robin prefix list must not be empty".into(),
            ));
        }
        Ok(PrefixStrategy {
            kind: Kind::RoundRobin { prefixes, epoch },
        })
    }

    /// The prefix of rank `rank`'s files.
    pub fn prefix(&self, rank: usize) -> String {
        let (part, epoch) = match &self.kind {
            Kind::Default => return format!("__{rank}_"),
            Kind::Numeric {
                base,
                epoch,
                prefix_count,
                length,
                ..
            } => (
                Cow::Owned(digits_lsb_first(rank % prefix_count, *base, *length)),
                *epoch,
            ),
            Kind::RoundRobin { prefixes, epoch } => (
                Cow::Borrowed(prefixes[rank % prefixes.len()].as_str()),
                *epoch,
            ),
        };
        match epoch {
            Some(e) => format!("{part}/epoch_{e}/__{rank}_"),
            None => format!("{part}/__{rank}_"),
        }
    }
}

/// `n` in `base`, `length` digits, least-significant first (the package
/// pads to `length` and reverses the string).
fn digits_lsb_first(mut n: usize, base: u32, length: usize) -> String {
    let base = base as usize;
    let mut s = String::with_capacity(length);
    for _ in 0..length {
        s.push(char::from(DIGITS[n % base]));
        n /= base;
    }
    s
}

/// The spelling [`FromStr`] reads: `binary` and `hex` print as such, other
/// bases as `numeric:base=B,…`; count and min are always written.
impl fmt::Display for PrefixStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epoch = |e: &Option<u64>| e.map(|e| format!(",epoch={e}")).unwrap_or_default();
        match &self.kind {
            Kind::Default => f.write_str("default"),
            Kind::Numeric {
                base,
                epoch: e,
                min_prefix_length,
                prefix_count,
                ..
            } => {
                match base {
                    2 => f.write_str("binary:")?,
                    16 => f.write_str("hex:")?,
                    b => write!(f, "numeric:base={b},")?,
                }
                write!(
                    f,
                    "count={prefix_count},min={min_prefix_length}{}",
                    epoch(e)
                )
            }
            Kind::RoundRobin { prefixes, epoch: e } => {
                write!(f, "round-robin:{}{}", prefixes.join(","), epoch(e))
            }
        }
    }
}

/// Reads a strategy from a command-line spelling:
///
/// | spelling | strategy |
/// |---|---|
/// | `default` | `DefaultPrefixStrategy()` |
/// | `binary:count=4,epoch=7,min=3` | `BinaryPrefixStrategy(epoch_num=7, min_prefix_length=3, prefix_count=4)` |
/// | `hex:count=20` | `HexPrefixStrategy(prefix_count=20)` |
/// | `numeric:base=10,count=8` | base 10, 8 prefixes |
/// | `round-robin:a,b,epoch=2` | `RoundRobinPrefixStrategy(["a", "b"], epoch_num=2)` |
///
/// Settings of `binary`, `hex` and `numeric` (in any order, each at most
/// once): `count` (or `prefix_count`, default 1: every rank the same prefix,
/// as the package outside a process group), `min` (or `min_prefix_length`,
/// default 10), `epoch` (or `epoch_num`, default none); `numeric` needs
/// `base` (2 to 36). An epoch is a non-negative integer (the package also
/// takes a negative one, writing `epoch_-1/`). `round-robin` takes its
/// prefixes in order, separated by commas, and `epoch=N` anywhere among
/// them; a prefix cannot contain a comma, be empty or start with `epoch=`.
///
/// ```
/// use shmfetch::dcp::PrefixStrategy;
///
/// let s: PrefixStrategy = "binary:count=4,epoch=7,min=3".parse()?;
/// assert_eq!(s, PrefixStrategy::binary(Some(7), 3, 4)?);
/// assert_eq!(s.prefix(1), "100/epoch_7/__1_");
/// assert_eq!("hex:count=20".parse::<PrefixStrategy>()?.prefix(19), "3100000000/__19_");
/// assert_eq!("numeric:base=10,count=8".parse::<PrefixStrategy>()?.prefix(7), "7000000000/__7_");
/// assert_eq!("round-robin:a,b,epoch=2".parse::<PrefixStrategy>()?.prefix(1), "b/epoch_2/__1_");
/// assert_eq!("default".parse::<PrefixStrategy>()?, PrefixStrategy::default());
/// // Display writes the same spelling back.
/// assert_eq!(s.to_string(), "binary:count=4,min=3,epoch=7");
///
/// // Errors say what is wrong:
/// let e = "hex:count=0".parse::<PrefixStrategy>().unwrap_err();
/// assert!(e.to_string().contains("prefix_count must be a positive integer, got 0"));
/// assert!("binary:epoch=1.5".parse::<PrefixStrategy>().is_err());
/// assert!("numeric:count=8".parse::<PrefixStrategy>().is_err()); // no base
/// assert!("round-robin:".parse::<PrefixStrategy>().is_err()); // no prefix
/// # Ok::<(), shmfetch::Error>(())
/// ```
impl FromStr for PrefixStrategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<PrefixStrategy> {
        let bad = |msg: String| Error::InvalidConfig(format!("prefix strategy {s:?}: {msg}"));
        let (name, args) = s.split_once(':').unwrap_or((s, ""));
        let items: Vec<&str> = if args.is_empty() {
            Vec::new()
        } else {
            args.split(',').collect()
        };
        match name {
            "default" => {
                if items.is_empty() {
                    Ok(PrefixStrategy::default())
                } else {
                    Err(bad("default takes no settings".into()))
                }
            }
            "binary" | "hex" | "numeric" => {
                let mut base = None;
                let mut count = None;
                let mut min = None;
                let mut epoch = None;
                for item in items {
                    let (key, value) = item
                        .split_once('=')
                        .ok_or_else(|| bad(format!("{item:?} is not KEY=VALUE")))?;
                    let slot = match key {
                        "base" if name == "numeric" => &mut base,
                        "count" | "prefix_count" => &mut count,
                        "min" | "min_prefix_length" => &mut min,
                        "epoch" | "epoch_num" => &mut epoch,
                        _ => {
                            let keys = if name == "numeric" {
                                "base, count, min, epoch"
                            } else {
                                "count, min, epoch"
                            };
                            return Err(bad(format!(
                                "unknown setting {key:?} of {name} (expected {keys})"
                            )));
                        }
                    };
                    if slot.replace(value).is_some() {
                        return Err(bad(format!("{key} is given twice")));
                    }
                }
                let base = match (name, base) {
                    ("binary", _) => 2,
                    ("hex", _) => 16,
                    (_, Some(b)) => b
                        .parse()
                        .map_err(|_| bad(format!("base must be 2 to 36, got {b}")))?,
                    (_, None) => return Err(bad("numeric needs base=B (2 to 36)".into())),
                };
                // In the package's order: min_prefix_length, epoch, prefix_count.
                let min = match min {
                    None => DEFAULT_MIN_PREFIX_LENGTH,
                    Some(m) => m.parse().ok().filter(|&m| m >= 1).ok_or_else(|| {
                        bad(format!(
                            "min_prefix_length must be a positive integer, got {m}"
                        ))
                    })?,
                };
                let epoch = epoch.map(|e| parse_epoch(e).map_err(bad)).transpose()?;
                let count = match count {
                    None => 1,
                    Some(c) => c.parse().ok().filter(|&c| c >= 1).ok_or_else(|| {
                        bad(format!("prefix_count must be a positive integer, got {c}"))
                    })?,
                };
                PrefixStrategy::numeric(base, epoch, min, count).map_err(|e| match e {
                    Error::InvalidConfig(m) => bad(m
                        .strip_prefix("prefix strategy: ")
                        .unwrap_or(&m)
                        .to_string()),
                    other => other,
                })
            }
            "round-robin" => {
                let mut prefixes = Vec::new();
                let mut epoch = None;
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(e) = item.strip_prefix("epoch=") {
                        if epoch.replace(parse_epoch(e).map_err(bad)?).is_some() {
                            return Err(bad("epoch is given twice".into()));
                        }
                    } else if item.is_empty() {
                        return Err(bad(format!("item {} of the list is empty", i + 1)));
                    } else {
                        prefixes.push(item.to_string());
                    }
                }
                if prefixes.is_empty() {
                    return Err(bad(
                        "the round-robin prefix list must not be empty (round-robin:a,b)".into(),
                    ));
                }
                PrefixStrategy::round_robin(prefixes, epoch)
            }
            _ => Err(bad(format!(
                "unknown strategy {name:?} (expected default, binary, hex, numeric or round-robin)"
            ))),
        }
    }
}

fn parse_epoch(e: &str) -> std::result::Result<u64, String> {
    e.parse()
        .map_err(|_| format!("epoch must be a non-negative integer, got {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The package's own prefixes and refusals (scripts/gen-prefix-table.sh).
    const TABLE: &str = include_str!("../../tests/fixtures/prefix_strategies.tsv");

    struct Row<'a> {
        line: usize,
        kind: &'a str,
        base: Option<&'a str>,
        epoch: Option<&'a str>,
        min: Option<&'a str>,
        count: Option<&'a str>,
        world: Option<usize>,
        prefixes: Option<Vec<String>>,
        rank: Option<usize>,
        outcome: &'a str,
        value: &'a str,
        bad: Option<&'a str>,
    }

    fn rows() -> Vec<Row<'static>> {
        let cell = |c: &'static str| (c != "-").then_some(c);
        let mut lines = TABLE
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.starts_with('#'));
        let (_, header) = lines.next().unwrap();
        assert_eq!(
            header,
            "kind\tbase\tepoch\tmin\tcount\tworld\tprefixes\trank\toutcome\tvalue\tbad"
        );
        lines
            .map(|(i, l)| {
                let c: Vec<&str> = l.split('\t').collect();
                assert_eq!(c.len(), 11, "line {}: {l}", i + 1);
                Row {
                    line: i + 1,
                    kind: c[0],
                    base: cell(c[1]),
                    epoch: cell(c[2]),
                    min: cell(c[3]),
                    count: cell(c[4]),
                    world: cell(c[5]).map(|w| w.parse().unwrap()),
                    prefixes: cell(c[6]).map(|p| serde_json::from_str(p).unwrap()),
                    rank: cell(c[7]).map(|r| r.parse().unwrap()),
                    outcome: c[8],
                    value: c[9],
                    bad: cell(c[10]),
                }
            })
            .collect()
    }

    /// The strategy of an `ok` row through the typed constructors; the
    /// package's defaults filled in (min 10, count the world size or 1).
    fn typed(r: &Row) -> Result<PrefixStrategy> {
        let int = |c: Option<&str>| c.map(|c| c.parse::<u64>().unwrap());
        let epoch = int(r.epoch);
        match r.kind {
            "default" => Ok(PrefixStrategy::default_strategy()),
            "round-robin" => PrefixStrategy::round_robin(r.prefixes.clone().unwrap(), epoch),
            kind => {
                let min = int(r.min).map_or(DEFAULT_MIN_PREFIX_LENGTH, |m| m as usize);
                let count = int(r.count).map_or(r.world.unwrap_or(1), |c| c as usize);
                match kind {
                    "binary" => PrefixStrategy::binary(epoch, min, count),
                    "hex" => PrefixStrategy::hex(epoch, min, count),
                    "numeric" => {
                        PrefixStrategy::numeric(r.base.unwrap().parse().unwrap(), epoch, min, count)
                    }
                    k => panic!("line {}: unknown kind {k}", r.line),
                }
            }
        }
    }

    /// The row as a command-line spelling (count given explicitly where
    /// the package took the world size).
    fn spelling(r: &Row) -> String {
        let mut s = match r.kind {
            "round-robin" => {
                let mut items = r.prefixes.clone().unwrap();
                if let Some(e) = r.epoch {
                    items.push(format!("epoch={e}"));
                }
                return format!("round-robin:{}", items.join(","));
            }
            "numeric" => format!("numeric:base={}", r.base.unwrap()),
            k => format!("{k}:"),
        };
        let mut settings = Vec::new();
        if let Some(c) = r
            .count
            .map(str::to_string)
            .or(r.world.map(|w| w.to_string()))
        {
            settings.push(format!("count={c}"));
        }
        if let Some(m) = r.min {
            settings.push(format!("min={m}"));
        }
        if let Some(e) = r.epoch {
            settings.push(format!("epoch={e}"));
        }
        if r.kind == "numeric" && !settings.is_empty() {
            s.push(',');
        }
        s + &settings.join(",")
    }

    #[test]
    fn every_prefix_in_the_packages_table_is_ours() {
        let rows = rows();
        let oks: Vec<_> = rows.iter().filter(|r| r.outcome == "ok").collect();
        assert!(oks.len() >= 200, "{} rows", oks.len());
        for r in oks {
            let rank = r.rank.unwrap();
            let s = typed(r).unwrap_or_else(|e| panic!("line {}: {e}", r.line));
            assert_eq!(s.prefix(rank), r.value, "line {}: {s} rank {rank}", r.line);
            // The same strategy spelled for the command line, and Display's
            // spelling, read back (a round-robin list with an empty prefix
            // has no spelling).
            let spellable = r
                .prefixes
                .as_ref()
                .is_none_or(|p| p.iter().all(|p| !p.is_empty()));
            if r.kind != "default" && spellable {
                let parsed: PrefixStrategy = spelling(r)
                    .parse()
                    .unwrap_or_else(|e| panic!("line {}: {e}", r.line));
                assert_eq!(parsed, s, "line {}: {}", r.line, spelling(r));
            }
            if spellable {
                let back = s.to_string().parse::<PrefixStrategy>();
                assert_eq!(back.ok().as_ref(), Some(&s), "line {}: {s}", r.line);
            }
        }
    }

    #[test]
    fn every_refusal_in_the_packages_table_is_ours() {
        let rows = rows();
        let errors: Vec<_> = rows.iter().filter(|r| r.outcome == "error").collect();
        assert!(errors.len() >= 40, "{} rows", errors.len());
        for r in errors {
            // What the message must name: the argument at fault.
            let names = match r.bad.unwrap() {
                "min" => "min_prefix_length",
                "epoch" => "epoch",
                "count" => "prefix_count",
                "prefixes" => "prefix list must not be empty",
                b => panic!("line {}: unknown argument {b}", r.line),
            };
            let spelled = spelling(r);
            let e = spelled.parse::<PrefixStrategy>().expect_err(&format!(
                "line {}: {spelled} must be refused ({})",
                r.line, r.value
            ));
            let msg = e.to_string();
            assert!(
                matches!(e, Error::InvalidConfig(_)),
                "line {}: {e:?}",
                r.line
            );
            assert!(
                msg.contains(names),
                "line {}: {msg:?} does not name {names}",
                r.line
            );
            // Where the typed constructors can hold the arguments, they
            // refuse them too, for the same reason.
            let typed_ok = [r.epoch, r.min, r.count]
                .iter()
                .all(|c| c.is_none_or(|c| c.parse::<u64>().is_ok()));
            if typed_ok {
                let e = typed(r).expect_err(&format!("line {}: typed must be refused", r.line));
                assert!(e.to_string().contains(names), "line {}: {e}", r.line);
            }
        }
    }

    #[test]
    fn a_prefix_count_of_usize_max_does_not_panic() {
        // The package lists all prefix_count prefixes and multiplies up
        // base^L: a straight port overflows (or allocates without end).
        for base in [2, 3, 10, 16, 36] {
            let s = PrefixStrategy::numeric(base, Some(1), 1, usize::MAX).unwrap();
            let l = minimal_length(base, usize::MAX);
            for rank in [0, 1, usize::MAX - 1, usize::MAX] {
                let p = s.prefix(rank);
                let digits = p.split('/').next().unwrap();
                assert_eq!(digits.len(), l, "base {base} rank {rank}: {p}");
            }
            // usize::MAX % usize::MAX: slot 0, all zeros.
            assert_eq!(
                s.prefix(usize::MAX),
                format!("{}/epoch_1/__{}_", "0".repeat(l), usize::MAX)
            );
        }
        assert_eq!(
            PrefixStrategy::binary(None, 1, usize::MAX)
                .unwrap()
                .prefix(usize::MAX - 1),
            format!("0{}/__{}_", "1".repeat(63), usize::MAX - 1)
        );
    }

    #[test]
    fn a_min_prefix_length_longer_than_an_s3_key_is_refused_not_allocated() {
        for min in [1025, usize::MAX] {
            let e = PrefixStrategy::hex(None, min, 4).unwrap_err();
            assert!(e.to_string().contains("min_prefix_length"), "{e}");
            let e = format!("hex:min={min}")
                .parse::<PrefixStrategy>()
                .unwrap_err();
            assert!(e.to_string().contains("min_prefix_length"), "{e}");
        }
        // 1024 bytes, an S3 key's longest, is allowed.
        let p = PrefixStrategy::binary(None, 1024, 2).unwrap().prefix(1);
        assert_eq!(p, format!("1{}/__1_", "0".repeat(1023)));
    }

    #[test]
    fn a_base_outside_2_to_36_is_refused_where_the_package_loops_forever() {
        // Base 1 (or 0) and prefix_count > 1: the package's length loop
        // never ends (base^L stays 1); past 36 there are no digits.
        for base in [0, 1, 37, u32::MAX] {
            let e = PrefixStrategy::numeric(base, None, 10, 2).unwrap_err();
            assert!(e.to_string().contains("base must be 2 to 36"), "{e}");
            let e = format!("numeric:base={base},count=2")
                .parse::<PrefixStrategy>()
                .unwrap_err();
            assert!(e.to_string().contains("base must be 2 to 36"), "{e}");
        }
    }

    #[test]
    fn a_negative_epoch_is_refused_though_the_package_writes_epoch_minus_1() {
        for spelled in [
            "binary:epoch=-1",
            "hex:count=4,epoch=-7",
            "round-robin:a,epoch=-1",
        ] {
            let e = spelled.parse::<PrefixStrategy>().unwrap_err();
            assert!(
                e.to_string()
                    .contains("epoch must be a non-negative integer"),
                "{e}"
            );
        }
    }

    /// The smallest L with base^L >= count, by u128 arithmetic.
    fn minimal_length(base: u32, count: usize) -> usize {
        let mut l = 1;
        let mut size = u128::from(base);
        while size < count as u128 {
            l += 1;
            size *= u128::from(base);
        }
        l
    }

    proptest! {
        /// The prefix's digits, read least-significant first, are
        /// `rank % prefix_count`; their number is the minimal L (or
        /// min_prefix_length); the rest of the prefix is the epoch and rank.
        #[test]
        fn numeric_digits_decode_to_the_ranks_slot(
            base in 2u32..=36,
            count in prop_oneof![1usize..=1000, any::<usize>().prop_map(|c| c.max(1))],
            min in 1usize..=40,
            rank in any::<usize>(),
            epoch in proptest::option::of(any::<u64>()),
        ) {
            let s = PrefixStrategy::numeric(base, epoch, min, count).unwrap();
            let p = s.prefix(rank);
            let (digits, rest) = p.split_once('/').unwrap();
            let expected_rest = match epoch {
                Some(e) => format!("epoch_{e}/__{rank}_"),
                None => format!("__{rank}_"),
            };
            prop_assert_eq!(rest, expected_rest);
            prop_assert_eq!(digits.len(), minimal_length(base, count).max(min));
            let mut value: u128 = 0;
            for d in digits.bytes().rev() {
                let v = DIGITS.iter().position(|&x| x == d).unwrap() as u128;
                prop_assert!(v < u128::from(base));
                value = value * u128::from(base) + v;
            }
            prop_assert_eq!(value, (rank % count) as u128);
        }
    }
}
