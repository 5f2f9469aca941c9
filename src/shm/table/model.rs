//! Model check of the slot state machine (issue #9), with shuttle.
//!
//! The parties of a ring download run as shuttle threads over the very
//! steps the real table runs ([`step`], on shuttle's atomics through
//! [`WordCell`]):
//!
//! * the **consumer** assigns chunks `k = 0..chunks` in order to slot
//!   `k % slots` (at most `slots` ahead, recording `k` as the slot's range),
//!   queues the task `(slot, generation)`, waits on the doorbell until the
//!   slot is `Ready` or `Failed`, checks the slot's data — when it sees
//!   `Ready` and again before it releases the slot, as a consumer holding
//!   a chunk reads its bytes over time — and releases it;
//! * **workers** take tasks from the pool's queue (the pool notes the task
//!   as the worker's), claim, read the slot's range, write the data (a
//!   garbage value first: a partial write), publish `Ready`, ring the
//!   doorbell and report to the pool. While kill tokens are left a worker
//!   may die — the scheduler chooses — after its claim, mid-write, after
//!   its publish, or after its report;
//! * the **supervisor** (the pool) hears of a death, joins the dead thread
//!   (the real pool reaps the process before judging), applies the
//!   supervisor rule to the task the pool had noted for it — reclaim and
//!   re-queue with the new generation, fail it past the crash budget, or
//!   nothing — and starts a replacement worker.
//!
//! The consumer checks what it can see: `Ready` always holds chunk `k`'s
//! data while it holds the slot; its own assigns and releases always win;
//! a `Failed` slot comes only from the supervisor past the crash budget; so
//! every chunk is delivered as `k`, in order, or the run ends on such a
//! `Failed` slot. Ghost checks (the checker's own bookkeeping) add that no
//! task is re-run, nor its chunk claimed again, after its `Ready` was
//! published, that a claimed slot holds the task's chunk, and that a
//! generation names one task only. A deadlock (the consumer waiting for a
//! slot nobody will finish) fails the run too.
//!
//! The negative checks run a supervisor that re-runs the dead worker's task
//! unconditionally — the bug the slot table's design fixes — and show that
//! the model catches it, by the ghost checks and by the consumer's alone,
//! and that with the tasks of the pool before the table (a task carried its
//! range) the consumer gets a `Ready` slot holding another chunk's bytes:
//! the original incident.
//!
//! Shuttle runs all atomics as sequentially consistent, so this checks the
//! protocol (who may take which step when), not the memory orderings.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
// Ghost state and kill tokens use std's types: bookkeeping of the checker,
// not operations of the protocol, so they add no scheduling points.
use std::sync::Mutex as GhostMutex;
use std::sync::atomic::{AtomicBool, AtomicU32};

use shuttle::rand::{Rng, thread_rng};
use shuttle::scheduler::{PctScheduler, RandomScheduler, Scheduler};
use shuttle::sync::atomic::{AtomicU64, Ordering};
use shuttle::sync::{Arc, Condvar, Mutex};
use shuttle::thread::{self, JoinHandle};
use shuttle::{Config, FailurePersistence, Runner};

use super::{State, Word, WordCell, step};

impl WordCell for AtomicU64 {
    fn load_word(&self) -> u64 {
        self.load(Ordering::Acquire)
    }

    fn cas_word(&self, from: u64, to: u64) -> bool {
        self.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// What a worker writes first: a partial write, never a chunk id.
const GARBAGE: u64 = u64::MAX;
/// Deaths on one task the supervisor re-runs before failing it (the
/// pool's `max_crash_retries`).
const MAX_CRASH_RETRIES: u32 = 1;

/// What the supervisor does with a dead worker's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// The supervisor rule: reclaim only `Assigned(g)`/`Writing(g, _)`.
    Table,
    /// The old pool: re-run the task whatever the slot holds (the slot is
    /// put back to `Assigned` with a fresh generation so that the re-run
    /// can claim it).
    RerunAlways,
}

#[derive(Debug, Clone, Copy)]
struct Params {
    slots: u32,
    workers: u32,
    chunks: u64,
    /// Deaths allowed in one run.
    kills: u32,
    rule: Rule,
    /// Workers write the chunk their task names instead of the range the
    /// slot holds, as the pool's tasks did before the slot table.
    tasks_carry_range: bool,
    /// Whether the ghost checks run (off: only what the consumer sees can
    /// catch a bug).
    ghost_checks: bool,
}

#[derive(Debug, Clone, Copy)]
struct Task {
    slot: u32,
    generation: u32,
    /// The chunk the task is for (the worker reads it from the slot unless
    /// `tasks_carry_range`).
    chunk: u64,
    /// Workers that died holding this task so far.
    crashes: u32,
}

/// The pool's books, under one lock.
#[derive(Default)]
struct Pool {
    queue: VecDeque<Task>,
    /// The task each worker (by pid) holds, from taking it to reporting.
    busy: HashMap<u32, Task>,
    /// Workers that died, not yet reaped.
    dead: VecDeque<u32>,
    /// The consumer is done: workers stop once the queue is empty.
    closed: bool,
}

/// One ring download.
struct Ring {
    p: Params,
    /// The slot words.
    words: Vec<AtomicU64>,
    /// The range recorded by assign: the chunk id.
    ranges: Vec<AtomicU64>,
    /// The slot's bytes: the chunk id its claimant read from `ranges`.
    data: Vec<AtomicU64>,
    /// Ghost: a `Ready` was published for chunk k.
    published: Vec<AtomicBool>,
    /// Ghost: the chunk of each task `(slot, generation)` handed out.
    tasks: GhostMutex<HashMap<(u32, u32), u64>>,
    /// Ghost: the supervisor failed chunk k's task past the crash budget.
    gave_up: Vec<AtomicBool>,
    kill_tokens: AtomicU32,
    pool: Mutex<Pool>,
    /// Workers wait here for tasks.
    work: Condvar,
    /// The supervisor waits here for deaths and the end.
    events: Condvar,
    /// The doorbell: the consumer checks the word under this lock.
    bell: Mutex<()>,
    rung: Condvar,
}

impl Ring {
    fn new(p: Params) -> Ring {
        let atomics = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Ring {
            p,
            words: atomics(p.slots as usize),
            ranges: atomics(p.slots as usize),
            data: atomics(p.slots as usize),
            published: (0..p.chunks).map(|_| AtomicBool::new(false)).collect(),
            tasks: GhostMutex::new(HashMap::new()),
            gave_up: (0..p.chunks).map(|_| AtomicBool::new(false)).collect(),
            kill_tokens: AtomicU32::new(p.kills),
            pool: Mutex::new(Pool::default()),
            work: Condvar::new(),
            events: Condvar::new(),
            bell: Mutex::new(()),
            rung: Condvar::new(),
        }
    }

    fn ring_bell(&self) {
        let _g = self.bell.lock().unwrap();
        self.rung.notify_all();
    }

    /// Queues `task` (a re-run goes first, as in the pool).
    fn queue(&self, task: Task, front: bool) {
        if self.p.ghost_checks {
            let old = self
                .tasks
                .lock()
                .unwrap()
                .insert((task.slot, task.generation), task.chunk);
            assert!(
                old.is_none(),
                "model: ghost: slot {} generation {} names chunk {old:?} and now chunk {}: a \
                 generation must name one task",
                task.slot,
                task.generation,
                task.chunk
            );
        }
        let mut pool = self.pool.lock().unwrap();
        if front {
            pool.queue.push_front(task);
        } else {
            pool.queue.push_back(task);
        }
        self.work.notify_one();
    }

    /// A kill point: the scheduler chooses whether the worker dies here,
    /// while kill tokens are left.
    fn dies_here(&self) -> bool {
        self.kill_tokens.load(Ordering::Relaxed) > 0
            && thread_rng().gen_ratio(1, 3)
            && self
                .kill_tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
                .is_ok()
    }
}

/// A worker's life; returns when it dies or the pool closes. A death is
/// the pool hearing of it (the socket closes): the thread ends right
/// after, and the supervisor joins it before judging.
fn worker(ring: Arc<Ring>, pid: u32) {
    let die = || {
        ring.pool.lock().unwrap().dead.push_back(pid);
        ring.events.notify_one();
    };
    loop {
        let task = {
            let mut pool = ring.pool.lock().unwrap();
            loop {
                if let Some(t) = pool.queue.pop_front() {
                    pool.busy.insert(pid, t);
                    break t;
                }
                if pool.closed {
                    return;
                }
                pool = ring.work.wait(pool).unwrap();
            }
        };
        let slot = task.slot as usize;
        if step::claim(&ring.words[slot], task.generation, pid) {
            if ring.dies_here() {
                return die(); // after the claim
            }
            let range = ring.ranges[slot].load(Ordering::Relaxed);
            if ring.p.ghost_checks {
                assert!(
                    range == task.chunk,
                    "model: ghost: worker {pid} claimed {task:?} in a slot holding chunk {range}"
                );
                assert!(
                    !ring.published[range as usize].load(Ordering::Relaxed),
                    "model: ghost: chunk {range} claimed again (worker {pid}, {task:?}) after \
                     its Ready was published"
                );
            }
            let k = if ring.p.tasks_carry_range {
                task.chunk
            } else {
                range
            };
            ring.data[slot].store(GARBAGE, Ordering::Relaxed);
            if ring.dies_here() {
                return die(); // mid-write
            }
            ring.data[slot].store(k, Ordering::Relaxed);
            if step::publish(&ring.words[slot], task.generation, pid, true) {
                ring.published[k as usize].store(true, Ordering::Relaxed);
            }
            ring.ring_bell();
            if ring.dies_here() {
                return die(); // after the publish, before the report
            }
        } else {
            // A stale task: nothing to write.
            ring.ring_bell();
        }
        ring.pool.lock().unwrap().busy.remove(&pid);
        if ring.dies_here() {
            return die(); // after the report
        }
    }
}

/// The pool's supervision: reaps dead workers, judges their tasks, replaces
/// them; at the end closes the queue and joins every worker.
fn supervisor(ring: Arc<Ring>) {
    let mut next_pid = 1;
    // Ordered, so that a seed replays the same schedule.
    let mut workers: BTreeMap<u32, JoinHandle<()>> = BTreeMap::new();
    let mut spawn = |workers: &mut BTreeMap<u32, JoinHandle<()>>| {
        let (r, pid) = (Arc::clone(&ring), next_pid);
        next_pid += 1;
        workers.insert(pid, thread::spawn(move || worker(r, pid)));
    };
    for _ in 0..ring.p.workers {
        spawn(&mut workers);
    }
    loop {
        let dead = {
            let mut pool = ring.pool.lock().unwrap();
            loop {
                if let Some(pid) = pool.dead.pop_front() {
                    break Some(pid);
                }
                if pool.closed {
                    break None;
                }
                pool = ring.events.wait(pool).unwrap();
            }
        };
        let Some(pid) = dead else { break };
        // Reap first: the dead worker can write nothing more.
        if let Some(h) = workers.remove(&pid) {
            h.join().unwrap();
        }
        let job = ring.pool.lock().unwrap().busy.remove(&pid);
        if let Some(job) = job {
            supervise(&ring, job);
        }
        spawn(&mut workers);
    }
    ring.work.notify_all();
    for (_, h) in workers {
        h.join().unwrap();
    }
}

/// The supervisor rule (the pool's `supervise`) for a dead worker's task.
fn supervise(ring: &Ring, mut job: Task) {
    let cell = &ring.words[job.slot as usize];
    if ring.p.rule == Rule::Table && !step::word(cell).in_flight(job.generation) {
        return ring.ring_bell(); // done: never run again
    }
    job.crashes += 1;
    if job.crashes > MAX_CRASH_RETRIES {
        step::fail(cell, job.generation, || {
            ring.gave_up[job.chunk as usize].store(true, Ordering::Relaxed);
        });
        return ring.ring_bell();
    }
    let rerun = match ring.p.rule {
        Rule::Table => step::reclaim(cell, job.generation),
        Rule::RerunAlways => {
            let w = step::word(cell);
            let to = Word::new(State::Assigned, 0, w.generation.wrapping_add(1));
            cell.cas_word(w.pack(), to.pack()).then_some(to.generation)
        }
    };
    match rerun {
        Some(generation) => {
            if ring.p.ghost_checks {
                assert!(
                    !ring.published[job.chunk as usize].load(Ordering::Relaxed),
                    "model: ghost: the supervisor re-runs {job:?} after its Ready was published"
                );
            }
            ring.queue(Task { generation, ..job }, true);
        }
        None => ring.ring_bell(),
    }
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every chunk delivered, in order, with its own bytes.
    Delivered,
    /// Chunk k's slot failed (past the crash budget).
    Failed(u64),
}

fn consumer(ring: &Ring) -> Outcome {
    let (slots, chunks) = (u64::from(ring.p.slots), ring.p.chunks);
    let mut next_submit = 0;
    for k in 0..chunks {
        while next_submit < chunks && next_submit < k + slots {
            let slot = (next_submit % slots) as usize;
            let assigned = step::assign(&ring.words[slot], || {
                ring.ranges[slot].store(next_submit, Ordering::Relaxed);
            });
            let generation = assigned.unwrap_or_else(|e| {
                panic!("model: consumer: could not assign its released slot {slot}: {e:?}")
            });
            let task = Task {
                slot: slot as u32,
                generation,
                chunk: next_submit,
                crashes: 0,
            };
            ring.queue(task, false);
            next_submit += 1;
        }
        let slot = (k % slots) as usize;
        let w = {
            let mut bell = ring.bell.lock().unwrap();
            loop {
                let w = step::word(&ring.words[slot]);
                if w.state.is_done() {
                    break w;
                }
                bell = ring.rung.wait(bell).unwrap();
            }
        };
        if w.state == State::Failed {
            assert!(
                w.aux == 0 && ring.gave_up[k as usize].load(Ordering::Relaxed),
                "model: consumer: chunk {k} failed ({w:?}) but the supervisor did not give \
                 up on it"
            );
            return Outcome::Failed(k);
        }
        for when in ["on Ready", "before release"] {
            let d = ring.data[slot].load(Ordering::Relaxed);
            assert!(
                d == k,
                "model: consumer: wrong bytes: slot {slot} is {w:?} holding {d:#x} {when}, \
                 chunk {k} expected"
            );
            thread::yield_now();
        }
        assert!(
            step::release(&ring.words[slot]),
            "model: consumer: its release of slot {slot} (chunk {k}, {w:?}) lost: now {:?}",
            step::word(&ring.words[slot])
        );
    }
    Outcome::Delivered
}

/// One execution: the consumer and the supervisor (which starts the
/// workers), to the end.
fn run(p: Params) {
    let ring = Arc::new(Ring::new(p));
    let sup = {
        let r = Arc::clone(&ring);
        thread::spawn(move || supervisor(r))
    };
    let outcome = consumer(&ring);
    ring.pool.lock().unwrap().closed = true;
    ring.events.notify_one();
    sup.join().unwrap();
    if outcome == Outcome::Delivered {
        assert!(
            ring.published.iter().all(|p| p.load(Ordering::Relaxed)),
            "model: ghost: delivered without every chunk's Ready"
        );
    }
}

/// Silent on success: no warning about shuttle treating every ordering
/// as SeqCst (the module doc says so).
fn config() -> Config {
    let mut c = Config::new();
    c.silence_warnings = true;
    c
}

thread_local! {
    /// A model run is going on on this thread (shuttle runs all its
    /// threads on the caller's).
    static IN_MODEL: Cell<bool> = const { Cell::new(false) };
}

/// Shuttle's first run installs a process-wide panic hook that reports
/// every later panic as a failed shuttle task, those of unrelated tests in
/// this binary too; this confines it to panics inside a model run.
fn confine_shuttle_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let original = std::panic::take_hook();
        Runner::new(RandomScheduler::new(1), config()).run(|| {});
        let shuttle = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_MODEL.with(Cell::get) {
                shuttle(info)
            } else {
                original(info)
            }
        }));
    });
}

/// Runs the model with `p` under `scheduler`; a failed run panics with its
/// message (and shuttle prints the schedule that replays it, if `config`
/// says so).
fn run_model(p: Params, scheduler: impl Scheduler + 'static, config: Config) {
    confine_shuttle_panic_hook();
    IN_MODEL.with(|m| m.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| {
        Runner::new(scheduler, config).run(move || run(p));
    }));
    IN_MODEL.with(|m| m.set(false));
    if let Err(e) = result {
        resume_unwind(e);
    }
}

fn check(p: Params, scheduler: impl Scheduler + 'static) {
    run_model(p, scheduler, config());
}

/// One slot, one worker, three chunks, two deaths: every kill point, the
/// slot reused while a dead worker's task waits for judgement, and the
/// crash budget exceeded are all reached within a few hundred runs.
const ONE_SLOT: Params = Params {
    slots: 1,
    workers: 1,
    chunks: 3,
    kills: 2,
    rule: Rule::Table,
    tasks_carry_range: false,
    ghost_checks: true,
};

const TWO_SLOTS: Params = Params {
    slots: 2,
    workers: 2,
    chunks: 4,
    ..ONE_SLOT
};

#[test]
fn one_slot_one_worker_random() {
    check(ONE_SLOT, RandomScheduler::new(1000));
}

#[test]
fn one_slot_two_workers_pct() {
    let p = Params {
        workers: 2,
        ..ONE_SLOT
    };
    check(p, PctScheduler::new(3, 1000));
}

#[test]
fn two_slots_two_workers_random() {
    check(TWO_SLOTS, RandomScheduler::new(1000));
}

#[test]
fn two_slots_two_workers_pct() {
    check(TWO_SLOTS, PctScheduler::new(3, 1000));
}

const OLD_RULE: Params = Params {
    rule: Rule::RerunAlways,
    ..ONE_SLOT
};

/// The failure messages of one run of `p` per seed (a seed replays its
/// schedule, so this is deterministic).
fn failures(p: Params, seeds: std::ops::Range<u64>) -> impl Iterator<Item = String> {
    seeds.filter_map(move |seed| {
        let mut c = config();
        c.failure_persistence = FailurePersistence::None;
        let scheduler = RandomScheduler::new_from_seed(seed, 1);
        let err = catch_unwind(|| run_model(p, scheduler, c)).err()?;
        err.downcast_ref::<String>()
            .cloned()
            .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
    })
}

/// The negative check: the old supervisor (re-run whatever the slot holds)
/// fails the model. (It fails about one run in five.)
#[test]
#[should_panic(expected = "model: ")]
fn the_old_supervisor_is_caught() {
    check(OLD_RULE, RandomScheduler::new(1000));
}

/// The same with the ghost checks off: what the consumer sees is enough.
/// (About one run in eight: its release lost, its slot taken, or wrong
/// bytes.)
#[test]
#[should_panic(expected = "model: consumer: ")]
fn the_old_supervisor_is_caught_by_the_consumer_alone() {
    let p = Params {
        ghost_checks: false,
        ..OLD_RULE
    };
    check(p, RandomScheduler::new(1000));
}

/// The original incident: with tasks that carry their range, as the pool's
/// did before the slot table, the old supervisor re-runs a delivered task
/// into the slot that now holds the next chunk, and the consumer gets
/// `Ready` with the wrong bytes.
#[test]
fn the_old_pool_hands_out_wrong_bytes() {
    let p = Params {
        tasks_carry_range: true,
        ghost_checks: false,
        ..OLD_RULE
    };
    // About one run in forty; in others the consumer's release is lost or
    // its slot taken, or nothing goes wrong.
    assert!(
        failures(p, 0..1000).any(|m| m.contains("model: consumer: wrong bytes")),
        "the old pool never handed out wrong bytes in 1000 runs"
    );
}

/// With the supervisor rule, tasks that carry their range are harmless:
/// a re-run only ever writes into its own generation.
#[test]
fn the_rule_makes_tasks_that_carry_their_range_safe() {
    let p = Params {
        tasks_carry_range: true,
        ..ONE_SLOT
    };
    check(p, RandomScheduler::new(500));
}
