//! Range-level retries: capped, jittered exponential backoff, bounded by a
//! total time (and optionally a count of attempts), resuming from the last
//! byte received.
//!
//! The budget is time, not a count: by default a range is retried for up
//! to [`DEFAULT_MAX_ELAPSED`] with steps capped at [`DEFAULT_MAX_DELAY`],
//! so a server that restarts within a minute or so costs a pause, not the
//! download (five quick attempts used to give up within a second).
//!
//! What is retried is decided in one place, [`Error::is_retryable`]: 5xx
//! but 501 (not supported), 408, 429, transport errors (resets, timeouts, refused connections) and
//! short bodies. A wrong answer to a range request — 200 with the whole
//! object, a `Content-Range` naming another range — is tried
//! [`MISMATCH_ATTEMPTS`] times in all (a cache, proxy or restarting target
//! may answer wrongly once); a server that keeps doing it fails with
//! [`Error::RangeMismatch`] saying it does not honour `Range`. Everything
//! else — 4xx, an object that changed — fails at once.
//!
//! A retry after a partial body asks only for the bytes still missing; the
//! response must come from the same object version (checked against the
//! HEAD), so a resumed range never stitches two versions together.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::source::sink::RangeSink;
use crate::source::{ObjectMeta, ObjectSource};

/// Attempts per range by default: no count limit, the time budget
/// ([`DEFAULT_MAX_ELAPSED`]) decides.
pub const DEFAULT_ATTEMPTS: u32 = u32::MAX;
/// First backoff step; doubles each retry.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(100);
/// Largest single backoff, so a long outage is polled every few seconds
/// (5–10 s with jitter).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);
/// No new attempt starts this long after the first one: bounds how long a
/// range can keep a download waiting (a stalled read also needs the read
/// timeout to fire first). Two minutes: a server restart of 30 s or more is
/// survived (object_store allows 3 minutes).
pub const DEFAULT_MAX_ELAPSED: Duration = Duration::from_secs(120);
/// Answers to one range that may be wrong (200 with the whole object, a
/// `Content-Range` naming another range) before the range fails: one wrong
/// answer is retried, a server that keeps ignoring `Range` fails fast.
pub const MISMATCH_ATTEMPTS: u32 = 3;

/// How a range is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryConfig {
    /// Attempts per range, ≥ 1 (1 = never retry; [`DEFAULT_ATTEMPTS`] =
    /// no count limit, `max_elapsed` decides).
    pub attempts: u32,
    /// First backoff step.
    pub base_delay: Duration,
    /// Cap of one backoff step.
    pub max_delay: Duration,
    /// No attempt starts later than this after the first.
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: DEFAULT_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            max_elapsed: DEFAULT_MAX_ELAPSED,
        }
    }
}

impl RetryConfig {
    /// The backoff before retry number `retry` (1-based): the capped
    /// exponential step `min(max, base·2^(retry−1))`, then "equal jitter" —
    /// half of it fixed, half uniformly random — so workers that failed
    /// together do not retry together.
    pub fn delay(&self, retry: u32, random: u64) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let half = exp / 2;
        let span = u64::try_from((exp - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random % span.saturating_add(1))
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `attempts` is 0.
    pub fn validate(&self) -> Result<()> {
        if self.attempts == 0 {
            return Err(Error::InvalidConfig("attempts must be at least 1".into()));
        }
        Ok(())
    }
}

/// What [`fetch_range`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Requests made.
    pub attempts: u32,
    /// Bytes kept from failed attempts (not fetched again).
    pub resumed_bytes: u64,
}

/// One backoff of [`fetch_range`]: which attempt failed, why, and how long
/// to wait before the next.
#[derive(Debug, Clone, Copy)]
pub struct Backoff<'a> {
    /// The range being fetched (the whole range, not the missing tail).
    pub range: ByteRange,
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// Why it failed.
    pub cause: &'a Error,
    /// How long to wait before the next attempt.
    pub delay: Duration,
}

/// The backoff of a range fetched in the calling process (not a worker):
/// warns (target `shmfetch`, naming the object, range, attempt, cause and
/// delay), then sleeps.
pub fn warn_and_sleep(object: &str, b: &Backoff<'_>) -> bool {
    tracing::warn!(
        target: "shmfetch",
        object,
        range = %b.range,
        attempt = b.attempt,
        delay_ms = u64::try_from(b.delay.as_millis()).unwrap_or(u64::MAX),
        cause = %b.cause,
        "range failed, retrying after a backoff"
    );
    std::thread::sleep(b.delay);
    true
}

/// Runs a request that is not a range — the HEAD that reads an object's
/// size — under the same policy as ranges: a retryable error (refused
/// connection, reset, 5xx, 429 …) is retried with the same backoff until
/// the same deadline, each backoff warned about like a range's; anything
/// else (404, 403, …) is returned at once, unchanged. Past the budget the
/// last error is returned.
///
/// # Errors
/// The last error of `f`.
pub fn call<T>(object: &str, cfg: &RetryConfig, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !err.is_retryable()
            || attempt >= cfg.attempts.max(1)
            || start.elapsed() >= cfg.max_elapsed
        {
            return Err(err);
        }
        let d = cfg
            .delay(attempt, rand::random::<u64>())
            .min(cfg.max_elapsed.saturating_sub(start.elapsed()));
        tracing::warn!(
            target: "shmfetch",
            object,
            attempt,
            delay_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            cause = %err,
            "request failed, retrying after a backoff"
        );
        std::thread::sleep(d);
    }
}

/// Delivers `range` from `src` to `sink`, retrying per `cfg`. `wait` is
/// called for each backoff and must sleep for [`Backoff::delay`] (it is
/// also where a retry is reported; tests pass a recorder); it returns
/// whether to go on — `false` (the range is no longer wanted) ends the
/// fetch with the last error.
///
/// # Errors
/// [`Error::RangeFailed`] naming the object, the range, the attempts made
/// and the last cause.
pub fn fetch_range(
    src: &dyn ObjectSource,
    range: ByteRange,
    sink: &mut dyn RangeSink,
    expected: &ObjectMeta,
    cfg: &RetryConfig,
    wait: &mut dyn FnMut(&Backoff<'_>) -> bool,
) -> (Result<()>, FetchStats) {
    let start = Instant::now();
    let mut stats = FetchStats::default();
    let mut mismatches = 0u32;
    loop {
        stats.attempts += 1;
        let before = sink.filled();
        let sub = ByteRange {
            start: range.start + before as u64,
            end: range.end,
        };
        let r = src.read_range(sub, sink, expected);
        let err = match r {
            Ok(()) => return (Ok(()), stats),
            // The sink stopped the source: the range was cut short and
            // everything it still needs is in place. (A retry after a
            // failure still asks up to the range's end: the sink's length
            // must match the request's, and the cut stops it in time.)
            Err(_) if sink.cut_short() => return (Ok(()), stats),
            Err(e) => e,
        };
        // Keep what arrived intact: only the missing tail is asked again.
        let received = sink.filled() - before;
        if stats.attempts > 1 || received > 0 {
            stats.resumed_bytes += received as u64;
        }
        let out_of_time = start.elapsed() >= cfg.max_elapsed;
        let mut err = err;
        let mut retryable = err.is_retryable();
        if let Error::RangeMismatch { detail, .. } = &mut err {
            mismatches += 1;
            retryable = mismatches < MISMATCH_ATTEMPTS;
            if !retryable {
                detail.push_str(&format!(
                    "; {mismatches} wrong answers to this range: the server does not honour Range"
                ));
            }
        }
        let give_up = !retryable || stats.attempts >= cfg.attempts.max(1) || out_of_time;
        let d = cfg.delay(stats.attempts, rand::random::<u64>());
        let d = d.min(cfg.max_elapsed.saturating_sub(start.elapsed()));
        if give_up
            || !wait(&Backoff {
                range,
                attempt: stats.attempts,
                cause: &err,
                delay: d,
            })
        {
            let e = Error::RangeFailed {
                object: src.name().to_string(),
                range,
                attempts: stats.attempts,
                elapsed_ms: start.elapsed().as_millis() as u64,
                cause: Box::new(err),
            };
            return (Err(e), stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::sink::SliceSink;
    use std::cell::RefCell;

    /// A source that fails in scripted ways, then serves `data`.
    struct Scripted {
        data: Vec<u8>,
        script: RefCell<Vec<Error>>,
        partial: usize,
        asked: RefCell<Vec<ByteRange>>,
    }

    impl ObjectSource for Scripted {
        fn name(&self) -> &str {
            "mock://o"
        }
        fn meta(&self) -> Result<ObjectMeta> {
            Ok(ObjectMeta {
                size: self.data.len() as u64,
                ..Default::default()
            })
        }
        fn read_range(
            &self,
            range: ByteRange,
            sink: &mut dyn RangeSink,
            _: &ObjectMeta,
        ) -> Result<()> {
            self.asked.borrow_mut().push(range);
            let s = range.start as usize;
            if let Some(e) = self.script.borrow_mut().pop() {
                // Deliver a part, then fail.
                let n = self.partial.min(sink.remaining());
                sink.next_buf(n)[..n].copy_from_slice(&self.data[s..s + n]);
                sink.commit(n)?;
                return Err(e);
            }
            let mut pos = s;
            while pos < range.end as usize {
                let b = sink.next_buf(range.end as usize - pos);
                let n = b.len();
                b.copy_from_slice(&self.data[pos..pos + n]);
                sink.commit(n)?;
                pos += n;
            }
            Ok(())
        }
    }

    fn short() -> Error {
        Error::ShortRead {
            object: "o".into(),
            range: ByteRange { start: 0, end: 1 },
            got: 0,
            expected: 1,
        }
    }

    #[test]
    fn resumes_from_the_last_byte() {
        let data: Vec<u8> = (0..100u8).collect();
        let src = Scripted {
            data: data.clone(),
            script: RefCell::new(vec![short(), short()]),
            partial: 10,
            asked: RefCell::new(vec![]),
        };
        let mut buf = vec![0u8; 60];
        let mut sleeps = vec![];
        let (r, st) = fetch_range(
            &src,
            ByteRange { start: 20, end: 80 },
            &mut SliceSink::new(&mut buf),
            &src.meta().unwrap(),
            &RetryConfig::default(),
            &mut |b| {
                sleeps.push(b.delay);
                true
            },
        );
        r.unwrap();
        assert_eq!(buf, data[20..80]);
        assert_eq!(st.attempts, 3);
        assert_eq!(st.resumed_bytes, 20);
        assert_eq!(
            *src.asked.borrow(),
            vec![
                ByteRange { start: 20, end: 80 },
                ByteRange { start: 30, end: 80 },
                ByteRange { start: 40, end: 80 }
            ]
        );
        assert_eq!(sleeps.len(), 2);
    }

    /// Review of the range-cutting change: `fetch_range` took any error
    /// after a full sink for a cut range, so a body longer than its range
    /// (found only after the last wanted byte) passed as success.
    #[test]
    fn an_error_after_the_last_byte_still_fails_an_uncut_range() {
        let data: Vec<u8> = (0..100u8).collect();
        let longer = || Error::RangeMismatch {
            object: "o".into(),
            range: ByteRange { start: 0, end: 50 },
            detail: "the body is longer than the range".into(),
        };
        let src = Scripted {
            data,
            script: RefCell::new(vec![longer(), longer(), longer(), longer()]),
            partial: 50,
            asked: RefCell::new(vec![]),
        };
        let mut buf = vec![0u8; 50];
        let (r, _) = fetch_range(
            &src,
            ByteRange { start: 0, end: 50 },
            &mut SliceSink::new(&mut buf),
            &src.meta().unwrap(),
            &RetryConfig::default(),
            &mut |_| true,
        );
        assert!(
            matches!(&r, Err(Error::RangeFailed { cause, .. }) if matches!(**cause, Error::RangeMismatch { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn permanent_errors_are_not_retried_and_are_wrapped() {
        let src = Scripted {
            data: vec![0; 10],
            script: RefCell::new(vec![Error::Http {
                object: "o".into(),
                range: None,
                status: 404,
                url: "u".into(),
                message: "m".into(),
            }]),
            partial: 0,
            asked: RefCell::new(vec![]),
        };
        let mut buf = vec![0u8; 10];
        let (r, st) = fetch_range(
            &src,
            ByteRange { start: 0, end: 10 },
            &mut SliceSink::new(&mut buf),
            &src.meta().unwrap(),
            &RetryConfig::default(),
            &mut |_: &Backoff<'_>| true,
        );
        let e = r.unwrap_err();
        assert_eq!(st.attempts, 1);
        assert!(matches!(e.root(), Error::Http { status: 404, .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("mock://o") && msg.contains("bytes 0-9") && msg.contains("1 attempt"),
            "{msg}"
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let src = Scripted {
            data: vec![0; 10],
            script: RefCell::new((0..10).map(|_| short()).collect()),
            partial: 0,
            asked: RefCell::new(vec![]),
        };
        let cfg = RetryConfig {
            attempts: 3,
            ..Default::default()
        };
        let (r, st) = fetch_range(
            &src,
            ByteRange { start: 0, end: 10 },
            &mut SliceSink::new(&mut [0u8; 10]),
            &src.meta().unwrap(),
            &cfg,
            &mut |_: &Backoff<'_>| true,
        );
        assert!(matches!(
            r.unwrap_err(),
            Error::RangeFailed { attempts: 3, .. }
        ));
        assert_eq!(st.attempts, 3);
    }

    fn wrong_answer() -> Error {
        Error::RangeMismatch {
            object: "o".into(),
            range: ByteRange { start: 0, end: 10 },
            detail: "HTTP 200 instead of 206: the server ignored Range".into(),
        }
    }

    #[test]
    fn a_wrong_answer_is_retried_and_a_third_one_fails_saying_why() {
        let data: Vec<u8> = (0..10u8).collect();
        let run = |wrong: usize| {
            let src = Scripted {
                data: data.clone(),
                script: RefCell::new((0..wrong).map(|_| wrong_answer()).collect()),
                partial: 0,
                asked: RefCell::new(vec![]),
            };
            let mut buf = vec![0u8; 10];
            let mut waits = 0;
            let (r, st) = fetch_range(
                &src,
                ByteRange { start: 0, end: 10 },
                &mut SliceSink::new(&mut buf),
                &src.meta().unwrap(),
                &RetryConfig::default(),
                &mut |b: &Backoff<'_>| {
                    assert!(matches!(b.cause, Error::RangeMismatch { .. }));
                    waits += 1;
                    true
                },
            );
            (r.map(|()| buf), st, waits)
        };
        let (r, st, waits) = run(2);
        assert_eq!(r.unwrap(), data);
        assert_eq!((st.attempts, waits), (3, 2));
        let (r, st, waits) = run(10);
        assert_eq!((st.attempts, waits), (MISMATCH_ATTEMPTS, 2));
        let e = r.unwrap_err();
        assert!(
            matches!(e.root(), Error::RangeMismatch { detail, .. }
                if detail.contains("does not honour Range")),
            "{e}"
        );
    }

    #[test]
    fn a_huge_max_delay_does_not_overflow_the_jitter() {
        // Found in review: the jitter span was `as u64`-truncated and
        // `span + 1` overflowed (a panic in debug, `% 0` in release) for
        // steps of 2^65 ns and more. A step of 2·(2^64−1) ns makes the
        // random half exactly u64::MAX ns wide.
        assert_eq!(2 * (u64::MAX as u128), 36_893_488_147_419_103_230);
        let step = Duration::new(36_893_488_147, 419_103_230);
        let cfg = RetryConfig {
            base_delay: step,
            max_delay: Duration::MAX,
            ..RetryConfig::default()
        };
        for r in [0, 1, u64::MAX - 1, u64::MAX] {
            let d = cfg.delay(1, r);
            assert!(d >= step / 2 && d <= step, "{d:?}");
        }
    }

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let cfg = RetryConfig::default();
        assert_eq!(cfg.delay(1, 0), Duration::from_millis(50));
        assert_eq!(
            cfg.delay(1, u64::MAX - 1).max(cfg.delay(1, 0)),
            cfg.delay(1, u64::MAX - 1)
        );
        assert!(cfg.delay(3, 0) >= Duration::from_millis(200));
        assert!(cfg.delay(30, u64::MAX) <= DEFAULT_MAX_DELAY);
        assert!(cfg.delay(30, 0) >= DEFAULT_MAX_DELAY / 2);
    }
}
