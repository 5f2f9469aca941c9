//! Faults from the network itself, not from our server: nginx runs in its
//! own network namespace behind a veth pair, and every packet between it
//! and us crosses a kernel path that delays, reorders, drops and
//! rate-limits it — while a restarter kills and restarts nginx in the
//! middle of downloads.
//!
//! - **Latency, jitter, reordering, loss**: the namespace's iptables send
//!   every packet on the veth (both directions) to an NFQUEUE; a thread of
//!   this test (switched into the namespace with `setns`) holds each packet
//!   for a random one-way delay and then accepts it, accepts some later than
//!   the ones behind them (reordering) and drops a share of them (loss).
//!   The kernel's TCP sees real RTTs, retransmits and out-of-order segments.
//!   (The kernels of these machines are built without `sch_netem`, so
//!   `tc netem` is not available; NFQUEUE is, and does the same job.)
//! - **Bandwidth cap**: `tc tbf` on nginx's side of the veth.
//! - **Target restarts**: nginx (gateway and targets) is SIGKILLed and
//!   started again after a pause, cutting every connection in flight.
//!
//! Needs root, `ip` and `tc` (iproute2), iptables and nginx; the README's
//! test command installs what is missing, and without them the test fails
//! (it is never skipped silently). The short run (`netem_short`, 30
//! downloads) is in the default test run; the long one is
//!
//! ```sh
//! cargo test --release --test it netem_soak -- --ignored --nocapture
//! ```
//!
//! `NETEM_DOWNLOADS` (default 500) and `NETEM_SEED` (default: the clock)
//! change it; the seed is printed so a failure can be replayed, and a
//! progress line every 25 downloads. Each run has its own namespace, so
//! several can run side by side.

use std::collections::{BinaryHeap, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::faults::ShmDir;
use crate::nginx::Nginx;
use crate::soak::Rng;
use shmfetch::testing::content;
use shmfetch::{ParallelReader, PoolConfig, SourceOptions, SourceSpec, WorkerPool};

/// What the network does to packets, per direction.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// One-way delay range; RTT is twice this.
    pub delay_ms: (u64, u64),
    /// Percent of packets held back an extra 5–25 ms (overtaken by later
    /// ones: reordering).
    pub reorder_pct: u64,
    /// Percent of packets dropped.
    pub loss_pct: u64,
    /// nginx's egress bandwidth cap in Mbit/s.
    pub rate_mbit: u64,
}

fn run(cmd: &[&str]) {
    let o = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the README's test command installs iproute2 and iptables)",
                cmd[0]
            )
        });
    assert!(
        o.status.success(),
        "{}: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn iptables() -> &'static str {
    // The legacy backend needs only the kernel's xt NFQUEUE target.
    if Command::new("iptables-legacy")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "iptables-legacy"
    } else {
        "iptables"
    }
}

/// Counters of the packet path.
#[derive(Debug, Default)]
pub struct PacketStats {
    pub packets: AtomicU64,
    pub dropped: AtomicU64,
    pub reordered: AtomicU64,
}

/// A network namespace with nginx behind an impaired veth pair. Dropping
/// it stops nginx and the packet thread and deletes the namespace (which
/// deletes the veth pair and the namespace's rules with it).
pub struct NetLab {
    pub nginx: Nginx,
    ns: String,
    stop: Arc<AtomicBool>,
    packets: Option<JoinHandle<()>>,
    pub stats: Arc<PacketStats>,
}

impl NetLab {
    pub fn start(imp: Impairment) -> NetLab {
        let pid = std::process::id();
        let tag = format!("{:x}", (pid as u64) << 8 | (rand::random::<u8>() as u64));
        let ns = format!("sfnet-{tag}");
        let (h, n) = (format!("sfh{tag}"), format!("sfn{tag}"));
        let (h, n) = (&h[..h.len().min(15)], &n[..n.len().min(15)]);
        // A /30 in 10.200.0.0/13 from the pid and a random byte.
        let net = rand::random::<u32>() % (1 << 17);
        let a = 10u32 << 24 | 200 << 16 | net << 2;
        let ip = |x: u32| {
            let v = a + x;
            format!("{}.{}.{}.{}", v >> 24, v >> 16 & 255, v >> 8 & 255, v & 255)
        };
        let (host_ip, ns_ip) = (ip(1), ip(2));
        run(&["ip", "netns", "add", &ns]);
        let mut lab_ns = NsGuard(Some(ns.clone()));
        run(&[
            "ip", "link", "add", h, "type", "veth", "peer", "name", n, "netns", &ns,
        ]);
        run(&["ip", "addr", "add", &format!("{host_ip}/30"), "dev", h]);
        run(&["ip", "link", "set", h, "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            n,
        ]);
        run(&["ip", "-n", &ns, "link", "set", n, "up"]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let queue = (pid % 60_000 + 1) as u16;
        let q = queue.to_string();
        let ipt = iptables();
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                ipt,
                "-A",
                chain,
                dir,
                n,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &q,
                "--queue-bypass",
            ]);
        }
        let rate = format!("{}mbit", imp.rate_mbit);
        run(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", n, "root", "tbf", "rate",
            &rate, "burst", "256kb", "latency", "400ms",
        ]);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(PacketStats::default());
        let packets = {
            let (ns2, stop, stats) = (ns.clone(), stop.clone(), stats.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            let t = std::thread::spawn(move || packet_path(&ns2, queue, imp, &stop, &stats, tx));
            rx.recv_timeout(Duration::from_secs(10))
                .expect("packet thread started")
                .unwrap_or_else(|e| panic!("NFQUEUE in {ns}: {e}"));
            t
        };
        let nginx = Nginx::start_at(
            &ns_ip,
            8080,
            &[8081, 8082, 8083],
            &["ip", "netns", "exec", &ns],
        );
        lab_ns.0 = None;
        NetLab {
            nginx,
            ns,
            stop,
            packets: Some(packets),
            stats,
        }
    }

    pub fn spec(&self, object: &str) -> SourceSpec {
        let opts = SourceOptions {
            endpoint: Some(self.nginx.endpoint.clone()),
            token: None,
            s3: Default::default(),
        };
        SourceSpec::parse_with(&format!("ais://b/{object}"), &opts).unwrap()
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.nginx.kill();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.packets.take() {
            let _ = t.join();
        }
        drop(NsGuard(Some(self.ns.clone())));
    }
}

/// Deletes a namespace on drop (also when the set-up panics half-way).
struct NsGuard(Option<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// The packet thread: in the namespace, takes every queued packet and
/// accepts it after its delay, or drops it.
fn packet_path(
    ns: &str,
    queue: u16,
    imp: Impairment,
    stop: &AtomicBool,
    stats: &PacketStats,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let setup = || -> Result<nfq::Queue, String> {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
        // Only this thread enters the namespace.
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
        let mut q = nfq::Queue::open().map_err(|e| e.to_string())?;
        q.bind(queue).map_err(|e| e.to_string())?;
        // Headers are all we look at; the kernel keeps the packet.
        q.set_copy_range(queue, 64).map_err(|e| e.to_string())?;
        q.set_nonblocking(true);
        Ok(q)
    };
    let mut q = match setup() {
        Ok(q) => {
            let _ = started.send(Ok(()));
            q
        }
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let mut due: BinaryHeap<std::cmp::Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut held: HashMap<u64, nfq::Message> = HashMap::new();
    let mut seq = 0u64;
    let mut fifo = Instant::now();
    let pct = |p: u64| rand::random::<u64>() % 100 < p;
    while !stop.load(Ordering::Relaxed) {
        loop {
            match q.recv() {
                Ok(mut m) => {
                    stats.packets.fetch_add(1, Ordering::Relaxed);
                    if pct(imp.loss_pct) {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                        m.set_verdict(nfq::Verdict::Drop);
                        let _ = q.verdict(m);
                        continue;
                    }
                    m.set_verdict(nfq::Verdict::Accept);
                    let (lo, hi) = imp.delay_ms;
                    let now = Instant::now();
                    let mut at =
                        now + Duration::from_millis(lo + rand::random::<u64>() % (hi - lo + 1));
                    if pct(imp.reorder_pct) {
                        // Held back past the packets behind it.
                        stats.reordered.fetch_add(1, Ordering::Relaxed);
                        at += Duration::from_millis(5 + rand::random::<u64>() % 21);
                    } else {
                        // Jitter without reordering: a packet never leaves
                        // before the one ahead of it, as on a real path.
                        at = at.max(fifo);
                        fifo = at;
                    }
                    seq += 1;
                    due.push(std::cmp::Reverse((at, seq)));
                    held.insert(seq, m);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        let now = Instant::now();
        while let Some(std::cmp::Reverse((t, s))) = due.peek().copied() {
            if t > now {
                break;
            }
            due.pop();
            if let Some(m) = held.remove(&s) {
                let _ = q.verdict(m);
            }
        }
        // The queue's socket has no timeout to wait on: poll every 0.5 ms.
        std::thread::sleep(Duration::from_micros(500));
    }
    // Release what is held so nothing waits on a closed queue.
    for (_, m) in held.drain() {
        let _ = q.verdict(m);
    }
}

/// One soak run over the impaired network: `n` downloads of random
/// objects, modes, offsets, worker counts and chunk sizes, while nginx is
/// restarted every `restart_every` (down for up to `max_down`). Every
/// download must return the source's bytes.
fn soak(n: usize, max_size: u64, restart_every: Duration, max_down: Duration) {
    let seed: u64 = std::env::var("NETEM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::random::<u64>() | 1);
    let imp = Impairment {
        delay_ms: (10, 50),
        reorder_pct: 2,
        loss_pct: 1,
        rate_mbit: 400,
    };
    println!("netem soak: {n} downloads, {imp:?}, NETEM_SEED={seed}");
    let mut rng = Rng(seed);
    let lab = NetLab::start(imp);
    // Objects of random sizes, a few of them empty or tiny.
    let objects: Vec<(String, u64)> = (0..12)
        .map(|i| {
            let size = match i {
                0 => 0,
                1 => 1 + rng.below(100),
                _ => rng.below(max_size),
            };
            let name = format!("o{i}");
            lab.nginx.put("b", &name, size, seed ^ i);
            (name, size)
        })
        .collect();
    let specs: HashMap<String, SourceSpec> = objects
        .iter()
        .map(|(o, _)| (o.clone(), lab.spec(o)))
        .collect();
    let lab = Arc::new(std::sync::Mutex::new(lab));
    let stop = Arc::new(AtomicBool::new(false));
    let restarts = Arc::new(AtomicU64::new(0));
    let restarter = {
        let (lab, stop, restarts) = (lab.clone(), stop.clone(), restarts.clone());
        let mut r = Rng(seed.rotate_left(17) | 1);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let wait = restart_every / 2
                    + Duration::from_millis(r.below(restart_every.as_millis() as u64));
                let t = Instant::now();
                while t.elapsed() < wait && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let down = Duration::from_millis(200 + r.below(max_down.as_millis() as u64));
                lab.lock().unwrap().nginx.kill();
                std::thread::sleep(down);
                lab.lock().unwrap().nginx.spawn();
                restarts.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let pools: Vec<WorkerPool> = [1, 3, 8]
        .iter()
        .map(|&w| {
            WorkerPool::with_config(PoolConfig {
                workers: w,
                ..PoolConfig::default()
            })
            .unwrap()
        })
        .collect();
    let dir = ShmDir::new();
    let (mut ok, mut failed, mut corrupted, mut leaked, mut bytes) = (0, 0, 0, 0, 0u64);
    let t0 = Instant::now();
    for i in 0..n {
        let (name, size) = &objects[rng.below(objects.len() as u64) as usize];
        let size = *size;
        let chunk = [64u64 << 10, 256 << 10, 1 << 20, 4 << 20][rng.below(4) as usize];
        let pool = &pools[rng.below(3) as usize];
        let spec = specs[name].clone();
        let iter = rng.below(2) == 0;
        let offset = if iter && size > 0 {
            rng.below(size + 1)
        } else {
            0
        };
        let res = ParallelReader::builder(spec)
            .pool(pool.clone())
            .chunk_size(chunk)
            .shm_dir(&dir.0)
            .build()
            .and_then(|r| {
                if iter {
                    iter_bytes(&r, offset)
                } else {
                    r.read_all().map(|b| b.to_vec())
                }
            });
        match res {
            Ok(got) => {
                bytes += got.len() as u64;
                let mut want = vec![0u8; (size - offset) as usize];
                let seed_i = seed ^ name[1..].parse::<u64>().unwrap();
                content::fill(seed_i, offset, &mut want);
                if got == want {
                    ok += 1;
                } else {
                    corrupted += 1;
                    eprintln!(
                        "download {i}: CORRUPTED ({name}, {} bytes vs {})",
                        got.len(),
                        want.len()
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("download {i} ({name}, {size} bytes, chunk {chunk}, iter {iter}): {e}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !dir.entries().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        leaked += dir.entries().len();
        if (i + 1) % 25 == 0 {
            // A long run that is cut short still says how far it got.
            println!(
                "netem soak: {} of {n} in {:.0} s: {ok} correct, {failed} failed, {corrupted} corrupted, {leaked} leaked",
                i + 1,
                t0.elapsed().as_secs_f64()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    restarter.join().unwrap();
    let st = pools
        .iter()
        .map(|p| p.stats())
        .fold((0, 0), |a, s| (a.0 + s.retries, a.1 + s.resumed_bytes));
    let lab = lab
        .lock()
        .unwrap_or_else(|e| panic!("the restarter failed: {e}"));
    println!(
        "netem soak: {n} downloads in {:.1} s ({:.1} MiB verified): {ok} correct, {failed} failed, \
         {corrupted} corrupted, {leaked} leaked segments; nginx restarts {}, packets {} \
         (dropped {}, reordered {}), range retries {}, bytes resumed {}",
        t0.elapsed().as_secs_f64(),
        bytes as f64 / (1 << 20) as f64,
        restarts.load(Ordering::Relaxed),
        lab.stats.packets.load(Ordering::Relaxed),
        lab.stats.dropped.load(Ordering::Relaxed),
        lab.stats.reordered.load(Ordering::Relaxed),
        st.0,
        st.1,
    );
    let pids: Vec<i32> = pools.iter().flat_map(|p| p.worker_pids()).collect();
    drop(pools);
    assert_pids_gone(&pids);
    assert_eq!(corrupted, 0, "corrupted downloads");
    assert_eq!(leaked, 0, "leaked segments");
    assert_eq!(
        failed, 0,
        "downloads failed although every outage was shorter than the retry budget"
    );
    assert!(
        lab.stats.dropped.load(Ordering::Relaxed) > 0,
        "the network dropped nothing"
    );
}

/// The default run: 30 downloads of up to 2 MiB, nginx restarted every
/// 5–15 s for up to ~1 s.
#[test]
fn netem_short() {
    soak(
        30,
        2 << 20,
        Duration::from_secs(10),
        Duration::from_millis(800),
    );
}

#[test]
#[ignore = "long: run with --ignored (see the module docs)"]
fn netem_soak() {
    let n: usize = std::env::var("NETEM_DOWNLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    soak(n, 2 << 20, Duration::from_secs(10), Duration::from_secs(3));
}
