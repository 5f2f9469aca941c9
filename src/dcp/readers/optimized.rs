//! The DCP-optimized reader: only the planned items, fetched by range
//! group (large groups in pieces), the next piece prefetched.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use super::{DcpRead, FetchCounter, check_within, seek_target, to_io};
use crate::dcp::range_group::{ItemRange, MaxGap, RangeGroup, coalesce};
use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::reader::{ParallelBuffer, ParallelReader};

/// Reads the planned items of one file, in order.
///
/// The items are coalesced into [`RangeGroup`]s (gaps of at most
/// `max_gap` bridged). A background thread fetches each group through the
/// worker pool — split into chunks across the workers, into one shared
/// segment — and hands it over when the reader reaches it, so the next group
/// is in flight while the current one is read. Gap bytes are fetched but
/// never returned; bytes of the next item that arrive with the current
/// group are kept (no re-fetch). A group's segment is unlinked as soon as
/// the reader moves past its last item.
///
/// The contract (that of the S3 connector's DCP-optimized reader): a read
/// must start inside the current item or the next one; reads go forward
/// across items but may seek freely inside the current item; a read stops
/// at the end of its item; `SeekFrom::End` is unsupported. Anything else is
/// an [`Error::UnsupportedAccess`] (inside the `io::Error`, kind
/// `Unsupported`) naming the access, the current item and the next.
pub struct DcpOptimizedReader {
    file: String,
    items: Vec<ItemRange>,
    item_group: Vec<usize>,
    groups: Vec<RangeGroup>,
    cur: Option<usize>,
    loaded: Option<(usize, ParallelBuffer)>,
    pos: u64,
    failed: Option<Error>,
    received: usize,
    worker_pids: Vec<i32>,
    rx: Option<Receiver<Result<ParallelBuffer>>>,
    prefetch: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DcpOptimizedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcpOptimizedReader")
            .field("file", &self.file)
            .field("items", &self.items.len())
            .field("groups", &self.groups.len())
            .field("cur", &self.cur)
            .field("pos", &self.pos)
            .finish()
    }
}

/// Smallest piece a large group is cut into (see [`pieces`]).
const MIN_PIECE: u64 = 32 << 20;

/// Cuts each group longer than `max` into pieces of whole items, each at
/// most `max` bytes unless one item is longer. A piece ends where the next
/// one starts, so together they fetch exactly the bytes of the group
/// (gaps included), but the reader can consume one piece while the
/// prefetch thread fetches the next: with one group per file (a large
/// `max_gap`), the first item would otherwise wait for the whole file, and
/// fetching and decoding would take turns instead of overlapping.
fn pieces(groups: Vec<RangeGroup>, max: u64) -> Vec<RangeGroup> {
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        if g.len() <= max {
            out.push(g);
            continue;
        }
        let end = g.end;
        let mut cur: Option<RangeGroup> = None;
        for item in g.items {
            match &mut cur {
                Some(c) if item.end - c.start <= max => {
                    c.end = item.end;
                    c.items.push(item);
                }
                _ => {
                    if let Some(mut done) = cur.take() {
                        done.end = item.start;
                        out.push(done);
                    }
                    cur = Some(RangeGroup {
                        start: item.start,
                        end: item.end,
                        items: vec![item],
                    });
                }
            }
        }
        if let Some(mut last) = cur {
            last.end = end;
            out.push(last);
        }
    }
    out
}

impl DcpOptimizedReader {
    /// A reader of the items `ranges` (sorted by start, not overlapping)
    /// of `reader`'s object, bridging gaps up to `max_gap`. Starts fetching
    /// the first group at once; fetches are added to `counter`.
    ///
    /// # Errors
    /// [`Error::InvalidRanges`] for unsorted, overlapping or all-empty
    /// ranges; [`Error::Checkpoint`] for a range past the end of the file.
    pub fn new(
        reader: ParallelReader,
        ranges: &[ItemRange],
        max_gap: MaxGap,
        counter: Arc<FetchCounter>,
    ) -> Result<DcpOptimizedReader> {
        let file = reader.source().display_name();
        check_within(&file, ranges, reader.size())?;
        let piece = (reader.pool().workers() as u64 * reader.chunk_size()).max(MIN_PIECE);
        let groups = pieces(coalesce(ranges, max_gap)?, piece);
        let mut items = Vec::new();
        let mut item_group = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            items.extend(group.items.iter().copied());
            item_group.extend(std::iter::repeat_n(g, group.items.len()));
        }
        // One piece ready and one in flight while the reader consumes a third.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let plan = groups.clone();
        let prefetch = std::thread::Builder::new()
            .name("shmfetch-dcp-prefetch".into())
            .spawn(move || {
                for g in plan {
                    let r = reader.read_range(ByteRange {
                        start: g.start,
                        end: g.end,
                    });
                    if let Ok(buf) = &r {
                        counter.add(buf.ranges(), g.len());
                    }
                    let stop = r.is_err();
                    // The reader hung up (dropped, or moved on after an
                    // error): the buffer is dropped here, which unlinks it.
                    if tx.send(r).is_err() || stop {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Pool(format!("cannot start the prefetch thread: {e}")))?;
        Ok(DcpOptimizedReader {
            file,
            items,
            item_group,
            groups,
            cur: None,
            loaded: None,
            pos: 0,
            failed: None,
            received: 0,
            worker_pids: Vec::new(),
            rx: Some(rx),
            prefetch: Some(prefetch),
        })
    }

    /// The range groups, in fetch order.
    pub fn groups(&self) -> &[RangeGroup] {
        &self.groups
    }

    /// Pids of the worker processes that fetched the groups received so far.
    pub fn worker_pids(&self) -> &[i32] {
        &self.worker_pids
    }

    fn unsupported(&self, detail: String) -> io::Error {
        to_io(Error::UnsupportedAccess {
            reader: "dcp_optimized".into(),
            file: self.file.clone(),
            detail,
        })
    }

    /// The item a read at `pos` of `len` bytes falls in: the current one or
    /// the next.
    fn locate(&self, pos: u64, len: usize) -> io::Result<usize> {
        let next = self.cur.map_or(0, |c| c + 1);
        let inside = |i: usize| {
            self.items
                .get(i)
                .is_some_and(|r| r.start <= pos && pos < r.end)
        };
        if let Some(c) = self.cur
            && inside(c)
        {
            return Ok(c);
        }
        if inside(next) {
            return Ok(next);
        }
        let cur = match self.cur {
            Some(c) => format!("the current item is {}", self.items[c].interval()),
            None => "no item read yet".into(),
        };
        let nxt = match self.items.get(next) {
            Some(r) => format!("the next planned item is {}", r.interval()),
            None => "there is no next planned item".into(),
        };
        Err(self.unsupported(format!(
            "read of [{pos}, {}) is outside the current and the next item ({cur}; {nxt}); \
             reads must go forward through the planned items",
            pos + len as u64
        )))
    }

    fn group(&mut self, g: usize) -> io::Result<&ParallelBuffer> {
        if let Some(e) = &self.failed {
            return Err(to_io(e.clone()));
        }
        while self.loaded.as_ref().is_none_or(|(lg, _)| *lg != g) {
            // Unlink the group we are leaving before taking the next.
            self.loaded = None;
            let want = self.received;
            let rx = self
                .rx
                .as_ref()
                .ok_or_else(|| io::Error::other("prefetch channel closed"))?;
            match rx.recv() {
                Ok(Ok(buf)) => {
                    for p in buf.worker_pids() {
                        if !self.worker_pids.contains(p) {
                            self.worker_pids.push(*p);
                        }
                    }
                    self.received += 1;
                    self.loaded = Some((want, buf));
                }
                Ok(Err(e)) => {
                    self.failed = Some(e.clone());
                    return Err(to_io(e));
                }
                Err(_) => return Err(io::Error::other("the prefetch thread stopped")),
            }
        }
        match &self.loaded {
            Some((_, buf)) => Ok(buf),
            None => Err(io::Error::other("group missing after fetch")),
        }
    }
}

impl Read for DcpOptimizedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let idx = self.locate(self.pos, buf.len())?;
        self.cur = Some(idx);
        let item = self.items[idx];
        let g = self.item_group[idx];
        let gstart = self.groups[g].start;
        let pos = self.pos;
        let data = self.group(g)?;
        let n = buf.len().min((item.end - pos) as usize);
        let from = (pos - gstart) as usize;
        buf[..n].copy_from_slice(&data[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for DcpOptimizedReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        if let SeekFrom::End(d) = to {
            return Err(self.unsupported(format!(
                "SeekFrom::End({d}) is not supported (the reader knows only the planned items)"
            )));
        }
        self.pos = seek_target(self.pos, to, None)?;
        Ok(self.pos)
    }
}

impl DcpRead for DcpOptimizedReader {
    fn name(&self) -> &'static str {
        "dcp_optimized"
    }
}

impl Drop for DcpOptimizedReader {
    fn drop(&mut self) {
        // Hang up first so a finished prefetch does not wait to hand over,
        // then wait for it: its buffer is unlinked before we return.
        self.loaded = None;
        self.rx = None;
        if let Some(t) = self.prefetch.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> ItemRange {
        ItemRange { start, end }
    }

    #[test]
    fn pieces_cover_the_group_exactly_in_whole_items() {
        let items = vec![
            r(0, 10),
            r(10, 30),
            r(40, 45),
            r(45, 100),
            r(130, 140),
            r(150, 400),
        ];
        let groups = coalesce(&items, MaxGap::Unbounded).unwrap();
        assert_eq!(groups.len(), 1);
        for max in [1, 10, 30, 50, 100, 399, 400, 1000] {
            let p = pieces(groups.clone(), max);
            // Back to back from the group's start to its end.
            assert_eq!(p[0].start, 0);
            assert_eq!(p.last().unwrap().end, 400);
            for w in p.windows(2) {
                assert_eq!(w[0].end, w[1].start, "max {max}: {p:?}");
            }
            // Every item once, in order, each inside its piece.
            let got: Vec<_> = p.iter().flat_map(|g| g.items.clone()).collect();
            assert_eq!(got, items);
            for g in &p {
                assert!(g.items.iter().all(|i| g.start <= i.start && i.end <= g.end));
                let items_span = g.items.last().unwrap().end - g.items[0].start;
                assert!(items_span <= max || g.items.len() == 1, "max {max}: {g:?}");
            }
        }
        // Short groups are left alone.
        assert_eq!(pieces(groups.clone(), 400), groups);
    }
}
