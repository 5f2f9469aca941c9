//! AIStore's object placement (highest random weight), for direct-to-target
//! reads: which target of a cluster map holds an object.
//!
//! As the cluster computes it (`core/meta/hrw.go`, `cmn/bck.go` `MakeUname`)
//! and the Python SDK repeats it (`Smap.get_target_for_object`):
//!
//! - `uname = "{provider}/{namespace}/{bucket}/{object}"`, the namespace
//!   `@#` when global, else `@{uuid}#{name}`;
//! - `digest = xxh64(uname, seed 1103515245)`;
//! - every target not in maintenance or decommission (`flags & (4|8)`)
//!   scores `xoshiro256(id_digest ^ digest)`; the largest wins.
//!
//! Pure code: no I/O. The cluster map is untrusted input ([`Smap::parse`]).

use serde::Deserialize;

/// The seed of every XXH64 in AIStore's placement (`cos.MLCG32`).
pub const XXH_SEED: u64 = 1_103_515_245;

/// Target flags that take a node out of placement: maintenance (bit 2)
/// and decommission (bit 3).
pub const FLAGS_NOT_PLACED: u64 = (1 << 2) | (1 << 3);

/// A cluster map larger than this is refused (a real one is a few KiB per
/// hundred nodes).
pub const MAX_SMAP_BYTES: usize = 8 << 20;

/// More targets than this is refused.
const MAX_TARGETS: usize = 100_000;

/// The unique name AIStore hashes for placement: `provider/ns/bucket/object`.
///
/// ```
/// use shmfetch::source::aistore::hrw::uname;
/// assert_eq!(uname("ais", "", "", "b", "o/x"), "ais/@#/b/o/x");
/// assert_eq!(uname("ais", "u1", "ns", "b", "o"), "ais/@u1#ns/b/o");
/// ```
pub fn uname(provider: &str, ns_uuid: &str, ns_name: &str, bucket: &str, object: &str) -> String {
    format!("{provider}/@{ns_uuid}#{ns_name}/{bucket}/{object}")
}

/// `xxh64(s, seed 1103515245)`: a uname's digest, and a node's `id_digest`
/// from its daemon id.
pub fn digest(s: &str) -> u64 {
    xxhash_rust::xxh64::xxh64(s.as_bytes(), XXH_SEED)
}

/// AIStore's xoshiro256-style mix (`cmn/xoshiro256` `Hash`): splitmix64
/// twice, then xoshiro256**'s output scrambler, all wrapping.
pub fn xoshiro256(seed: u64) -> u64 {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    const C1: u64 = 0xbf58_476d_1ce4_e5b9;
    const C2: u64 = 0x94d0_49bb_1331_11eb;
    let mut z = seed.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(C1);
    z = (z ^ (z >> 27)).wrapping_mul(C2);
    z = (z ^ (z >> 31)).wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(C1);
    z = (z ^ (z >> 27)).wrapping_mul(C2);
    z = (z ^ (z >> 31)).wrapping_mul(5);
    z.rotate_left(7).wrapping_mul(9)
}

/// One storage target of a cluster map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The daemon id.
    pub id: String,
    /// `public_net.direct_url`: where the target serves the object API.
    pub direct_url: String,
    /// Node flags (maintenance, decommission, …).
    pub flags: u64,
    /// `xxh64(id)`, as the map carries it (computed when the map has 0,
    /// as the cluster does).
    pub id_digest: u64,
}

/// The part of AIStore's cluster map (`GET /v1/daemon?what=smap`) that
/// placement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smap {
    /// The map's version.
    pub version: i64,
    /// The targets, in the map's order.
    pub targets: Vec<Target>,
}

#[derive(Deserialize)]
struct WireNet {
    #[serde(default)]
    direct_url: String,
}

#[derive(Deserialize)]
struct WireNode {
    #[serde(default)]
    daemon_id: String,
    #[serde(default)]
    public_net: Option<WireNet>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    id_digest: u64,
}

#[derive(Deserialize)]
struct WireSmap {
    tmap: std::collections::BTreeMap<String, WireNode>,
    #[serde(default)]
    version: i64,
}

/// Whether `v` (a map or a node) names placement weights, which this
/// placement does not implement.
fn mentions_weights(v: &serde_json::Value) -> bool {
    v.as_object()
        .is_some_and(|o| o.keys().any(|k| k.to_ascii_lowercase().contains("weight")))
}

impl Smap {
    /// Parses a cluster map.
    ///
    /// # Errors
    /// A message when the body is too large, not JSON of a map, has no
    /// targets, has a target without a daemon id or with a `direct_url`
    /// that is not an absolute `http(s)` URL, or carries placement weights
    /// (a placement this code does not implement: the caller must not
    /// guess).
    pub fn parse(body: &[u8]) -> Result<Smap, String> {
        if body.len() > MAX_SMAP_BYTES {
            return Err(format!(
                "cluster map of {} bytes (at most {MAX_SMAP_BYTES})",
                body.len()
            ));
        }
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("cluster map is not JSON: {e}"))?;
        if mentions_weights(&value)
            || value
                .get("tmap")
                .and_then(|t| t.as_object())
                .is_some_and(|t| t.values().any(mentions_weights))
        {
            return Err("cluster map carries placement weights (not implemented)".into());
        }
        let wire: WireSmap =
            serde_json::from_value(value).map_err(|e| format!("cluster map: {e}"))?;
        if wire.tmap.is_empty() {
            return Err("cluster map has no targets".into());
        }
        if wire.tmap.len() > MAX_TARGETS {
            return Err(format!("cluster map has {} targets", wire.tmap.len()));
        }
        let mut targets = Vec::with_capacity(wire.tmap.len());
        for (key, node) in wire.tmap {
            let id = if node.daemon_id.is_empty() {
                key
            } else {
                node.daemon_id
            };
            if id.is_empty() {
                return Err("cluster map has a target without a daemon id".into());
            }
            let direct_url = node.public_net.map(|n| n.direct_url).unwrap_or_default();
            let direct_url = direct_url.trim_end_matches('/').to_string();
            match url::Url::parse(&direct_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(format!(
                        "target {id:?} has no usable direct_url ({direct_url:?})"
                    ));
                }
            }
            let id_digest = if node.id_digest == 0 {
                digest(&id)
            } else {
                node.id_digest
            };
            targets.push(Target {
                id,
                direct_url,
                flags: node.flags,
                id_digest,
            });
        }
        Ok(Smap {
            version: wire.version,
            targets,
        })
    }

    /// The target that holds `uname` (see [`uname`]): the highest
    /// [`xoshiro256`]`(id_digest ^ digest(uname))` among targets not in
    /// maintenance or decommission. `None` when every target is.
    pub fn target_for(&self, uname: &str) -> Option<&Target> {
        let d = digest(uname);
        self.targets
            .iter()
            .filter(|t| t.flags & FLAGS_NOT_PLACED == 0)
            .max_by_key(|t| xoshiro256(t.id_digest ^ d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Deserialize)]
    struct Vectors {
        smaps: Vec<serde_json::Value>,
        xoshiro256: Vec<(u64, u64)>,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        provider: String,
        ns_uuid: String,
        ns_name: String,
        bucket: String,
        object: String,
        uname: String,
        digest: u64,
        targets: Vec<String>,
    }

    fn vectors() -> Vectors {
        let text = include_str!("../../../tests/fixtures/hrw-vectors.json");
        serde_json::from_str(text).expect("fixture parses")
    }

    #[test]
    fn placement_matches_the_aistore_sdk_vectors() {
        let v = vectors();
        assert!(v.cases.len() >= 30);
        for (s, want) in &v.xoshiro256 {
            assert_eq!(xoshiro256(*s), *want, "xoshiro256({s})");
        }
        let smaps: Vec<Smap> = v
            .smaps
            .iter()
            .map(|s| Smap::parse(s.to_string().as_bytes()).expect("fixture smap"))
            .collect();
        for s in &smaps {
            for t in &s.targets {
                assert_eq!(t.id_digest, digest(&t.id), "id_digest of {}", t.id);
            }
        }
        for c in &v.cases {
            let u = uname(&c.provider, &c.ns_uuid, &c.ns_name, &c.bucket, &c.object);
            assert_eq!(u, c.uname);
            assert_eq!(digest(&u), c.digest, "{u}");
            for (s, want) in smaps.iter().zip(&c.targets) {
                assert_eq!(&s.target_for(&u).expect("a target").id, want, "{u}");
            }
        }
    }

    #[test]
    fn a_target_in_maintenance_or_decommission_is_never_chosen() {
        let v = vectors();
        // The second fixture map has t000 in maintenance, t001 decommissioning.
        let s = Smap::parse(v.smaps[1].to_string().as_bytes()).unwrap();
        for c in &v.cases {
            let t = s.target_for(&c.uname).unwrap();
            assert!(t.flags & FLAGS_NOT_PLACED == 0, "{}", t.id);
        }
        let mut all_out = s.clone();
        for t in &mut all_out.targets {
            t.flags |= 4;
        }
        assert_eq!(all_out.target_for("ais/@#/b/o"), None);
    }

    #[test]
    fn hostile_cluster_maps_are_errors() {
        let bad: &[&[u8]] = &[
            b"",
            b"null",
            b"[]",
            b"{}",
            b"{\"tmap\":{}}",
            b"{\"tmap\":[]}",
            b"{\"tmap\":{\"t1\":{\"daemon_id\":\"t1\"}}}",
            b"{\"tmap\":{\"t1\":{\"daemon_id\":\"t1\",\"public_net\":{\"direct_url\":\"file:///etc\"}}}}",
            b"{\"tmap\":{\"t1\":{\"daemon_id\":\"t1\",\"public_net\":{\"direct_url\":\"http://h:1\"},\"flags\":-1}}}",
            b"{\"tmap\":{\"t1\":{\"daemon_id\":\"t1\",\"public_net\":{\"direct_url\":\"http://h:1\"},\"id_digest\":1e400}}}",
            b"{\"tmap\":{\"\":{\"public_net\":{\"direct_url\":\"http://h:1\"}}}}",
            b"{\"tmap\":{\"t1\":{\"daemon_id\":\"t1\",\"public_net\":{\"direct_url\":\"http://h:1\"},\"weight\":3}}}",
            b"{\"placement_weights\":{},\"tmap\":{\"t1\":{\"public_net\":{\"direct_url\":\"http://h:1\"}}}}",
            b"{\"tmap\":{\"t1\":{\"public_net\":{\"direct_url\":\"http://h:1\"}}}",
        ];
        for b in bad {
            assert!(Smap::parse(b).is_err(), "{}", String::from_utf8_lossy(b));
        }
        let deep = "[".repeat(100_000);
        assert!(Smap::parse(deep.as_bytes()).is_err());
        let big = vec![b' '; MAX_SMAP_BYTES + 1];
        assert!(Smap::parse(&big).is_err());
        let ok = b"{\"tmap\":{\"t1\":{\"public_net\":{\"direct_url\":\"http://h:1/\"}}}}";
        let s = Smap::parse(ok).unwrap();
        assert_eq!(s.targets[0].id, "t1");
        assert_eq!(s.targets[0].direct_url, "http://h:1");
        assert_eq!(s.targets[0].id_digest, digest("t1"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Smap::parse(&bytes);
        }

        /// Removing a target that does not hold an object does not move it
        /// (the property HRW exists for).
        #[test]
        fn removing_another_target_keeps_placement(name in ".{1,40}", n in 2usize..12, drop in 0usize..12) {
            let targets: Vec<Target> = (0..n).map(|i| Target {
                id: format!("t{i}"),
                direct_url: format!("http://h:{i}"),
                flags: 0,
                id_digest: digest(&format!("t{i}")),
            }).collect();
            let s = Smap { version: 1, targets };
            let u = uname("ais", "", "", "b", &name);
            let owner = s.target_for(&u).unwrap().clone();
            let drop = drop % n;
            prop_assume!(s.targets[drop] != owner);
            let mut fewer = s.clone();
            fewer.targets.remove(drop);
            prop_assert_eq!(fewer.target_for(&u).unwrap(), &owner);
        }
    }
}
