//! AIStore direct-to-target reads: ranges go to the target AIStore's
//! placement names in the cluster map, with no redirect; a refusing target,
//! a stale or hostile map mean the gateway, still byte-exact.

use crate::common::*;
use shmfetch::source::aistore::hrw::{Smap, uname};
use shmfetch::testing::content;
use shmfetch::testing::server::{LoggedRequest, ServerConfig, TestServer};
use shmfetch::{ParallelReader, WorkerPool};

const C: u64 = 64 * 1024;
const SIZE: usize = 17 * C as usize + 4093;

/// A server of `cfg` with `ais://b/<name>` of [`SIZE`] bytes.
fn start(cfg: ServerConfig, name: &str) -> (TestServer, Vec<u8>) {
    let srv = TestServer::start(cfg).expect("server starts");
    let data = content::bytes(31, SIZE);
    srv.put_bytes("b", name, data.clone());
    (srv, data)
}

/// The server's cluster map, as a client fetches it.
fn smap_of(srv: &TestServer) -> Smap {
    let body = ureq::get(format!("{}/v1/daemon?what=smap", srv.endpoint()))
        .call()
        .expect("smap answered")
        .body_mut()
        .read_to_vec()
        .expect("smap body");
    Smap::parse(&body).expect("the test server's map parses")
}

/// The daemon id of the target that holds `ais://b/<name>` by `srv`'s map.
fn owner(srv: &TestServer, name: &str) -> String {
    smap_of(srv)
        .target_for(&uname("ais", "", "", "b", name))
        .expect("a target")
        .id
        .clone()
}

fn ranged_gets(log: &[LoggedRequest]) -> Vec<&LoggedRequest> {
    log.iter()
        .filter(|r| r.method == "GET" && r.range.is_some())
        .collect()
}

fn read_both_ways(spec: shmfetch::SourceSpec, pool: &WorkerPool, data: &[u8]) {
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .allow_small_chunks()
        .chunk_size(C)
        .direct(true)
        .build()
        .expect("reader");
    let buf = r.read_all().expect("read_all");
    assert_eq!(sha(&buf), sha(data), "read_all");
    let name = buf.segment_name().to_string();
    drop(buf);
    assert!(!segment_exists(&name), "segment {name} left");
    let got = iter_bytes(&r, 0).expect("create_iter");
    assert_eq!(sha(&got), sha(data), "create_iter");
    let got = iter_bytes(&r, C + 7).expect("create_iter at an offset");
    assert_eq!(
        sha(&got),
        sha(&data[C as usize + 7..]),
        "create_iter offset"
    );
}

#[test]
fn direct_reads_go_to_the_hrw_target_with_no_redirect_and_are_exact() {
    let name = "dir/ümlaut+plus a.bin";
    let (srv, data) = start(
        ServerConfig {
            targets: 5,
            ..ServerConfig::default()
        },
        name,
    );
    let owner = owner(&srv, name);
    let spec = ais_spec(&srv, &format!("ais://b/{name}"));
    let pool = WorkerPool::new(4).unwrap();
    read_both_ways(spec, &pool, &data);
    let log = srv.requests();
    let gets = ranged_gets(&log);
    assert!(gets.len() >= 53, "{} ranged GETs", gets.len());
    for g in &gets {
        assert_eq!(g.role, owner, "a range went elsewhere: {g:?}");
        assert_eq!(g.status, 206, "{g:?}");
        assert!(!g.query.contains("pid="), "a redirected range: {g:?}");
        assert!(!g.had_auth, "a token went to a target: {g:?}");
    }
    assert!(
        log.iter()
            .all(|r| r.role != "gateway" || r.object == "/v1/daemon"),
        "the gateway saw a request for the object"
    );
    assert_eq!(srv.redirects(), 0, "a request was redirected");
    // The map is fetched once per download at most (cached for a while).
    let maps = log.iter().filter(|r| r.object == "/v1/daemon").count();
    assert!((1..=3).contains(&maps), "{maps} map fetches");
    drop_pool_and_check(pool);
}

#[test]
fn direct_target_access_denied_falls_back_to_the_gateway_exactly() {
    let name = "denied.bin";
    let (srv, data) = start(
        ServerConfig {
            targets: 3,
            direct_denied: true,
            ..ServerConfig::default()
        },
        name,
    );
    let spec = ais_spec(&srv, &format!("ais://b/{name}"));
    let pool = WorkerPool::new(4).unwrap();
    read_both_ways(spec, &pool, &data);
    let log = srv.requests();
    let gets = ranged_gets(&log);
    let denied = gets.iter().filter(|g| g.status == 403).count();
    let through_gateway = gets
        .iter()
        .filter(|g| g.role != "gateway" && g.status == 206 && g.query.contains("pid="))
        .count();
    assert!(denied >= 1, "direct access was never tried");
    // Each worker gives up on the target after its first refusal.
    assert!(
        denied <= 3 * 4,
        "{denied} refusals for 3 downloads by 4 workers"
    );
    assert!(
        through_gateway >= 53,
        "{through_gateway} ranges via gateway"
    );
    drop_pool_and_check(pool);
}

#[test]
fn a_target_in_maintenance_is_skipped() {
    let name = "maint.bin";
    let (first, _) = start(
        ServerConfig {
            targets: 4,
            ..ServerConfig::default()
        },
        name,
    );
    let usual = owner(&first, name);
    drop(first);
    let idx: usize = usual.trim_start_matches("target").parse().unwrap();
    let (srv, data) = start(
        ServerConfig {
            targets: 4,
            maintenance: vec![idx],
            ..ServerConfig::default()
        },
        name,
    );
    let now = owner(&srv, name);
    assert_ne!(now, usual);
    let spec = ais_spec(&srv, &format!("ais://b/{name}"));
    let pool = WorkerPool::new(3).unwrap();
    read_both_ways(spec, &pool, &data);
    let log = srv.requests();
    assert!(
        log.iter().all(|r| r.role != usual),
        "the target in maintenance was asked"
    );
    let gets = ranged_gets(&log);
    assert!(!gets.is_empty());
    assert!(
        gets.iter()
            .all(|g| g.role == now && !g.query.contains("pid="))
    );
    drop_pool_and_check(pool);
}

#[test]
fn a_stale_map_whose_target_answers_404_falls_back_to_the_gateway() {
    let name = "moved.bin";
    // The map names a target of another cluster, which lacks the object.
    let (elsewhere, _) = start(ServerConfig::default(), "other");
    let other_map = ureq::get(format!("{}/v1/daemon?what=smap", elsewhere.endpoint()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let (srv, data) = start(
        ServerConfig {
            smap_body: Some(other_map),
            ..ServerConfig::default()
        },
        name,
    );
    let spec = ais_spec(&srv, &format!("ais://b/{name}"));
    let pool = WorkerPool::new(2).unwrap();
    read_both_ways(spec, &pool, &data);
    let stale = ranged_gets(&elsewhere.requests())
        .iter()
        .filter(|g| g.status == 404)
        .count();
    assert!(stale >= 1, "the stale target was never asked");
    let gw = ranged_gets(&srv.requests())
        .iter()
        .filter(|g| g.role == "gateway" && g.status == 301)
        .count();
    assert!(gw >= 53, "{gw} ranges through the gateway");
    drop_pool_and_check(pool);
}

#[test]
fn a_hostile_cluster_map_is_an_error_not_a_panic_and_the_gateway_serves() {
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies = [
        "not json".to_string(),
        "{}".to_string(),
        r#"{"tmap":{}}"#.to_string(),
        r#"{"tmap":{"t":{"daemon_id":"t","public_net":{"direct_url":"file:///etc/passwd"}}}}"#
            .to_string(),
        r#"{"tmap":{"t":{"daemon_id":"t","flags":12,"public_net":{"direct_url":"http://127.0.0.1:9"}}}}"#
            .to_string(),
        r#"{"tmap":{"t":{"daemon_id":"t","weight":2,"public_net":{"direct_url":"http://127.0.0.1:9"}}}}"#
            .to_string(),
        deep,
    ];
    let pool = WorkerPool::new(2).unwrap();
    for body in bodies {
        let name = "hostile.bin";
        let (srv, data) = start(
            ServerConfig {
                smap_body: Some(body.clone()),
                ..ServerConfig::default()
            },
            name,
        );
        let spec = ais_spec(&srv, &format!("ais://b/{name}"));
        let r = ParallelReader::builder(spec)
            .pool(pool.clone())
            .allow_small_chunks()
            .chunk_size(C)
            .direct(true)
            .build()
            .expect("reader");
        let buf = r.read_all().expect("read_all through the gateway");
        assert_eq!(sha(&buf), sha(&data), "map {:.60}", body);
        let log = srv.requests();
        assert!(
            ranged_gets(&log)
                .iter()
                .all(|g| g.role == "gateway" || g.query.contains("pid=")),
            "a range went direct with map {body:.60}"
        );
    }
    drop_pool_and_check(pool);
}
