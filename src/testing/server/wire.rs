//! One connection's bytes: each request's head, then its body.
//!
//! A request's body is read only when its handler asks for it
//! ([`Conn::read_body`]); bytes read past a head stay in the connection's
//! buffer for the body or the next (pipelined) request. What happens to a
//! body nobody read is decided once, after the handler ([`Conn::finish`]),
//! like Go's `net/http` server, which AIStore runs on: a client that sent
//! `Expect: 100-continue` and was never told to continue, a body longer
//! than [`DISCARD_LIMIT`], a chunked one or a `Connection: close` request
//! end the connection (after the answer, with a lingering close so the
//! client reads the answer rather than a reset); a short body is read and
//! dropped and the connection kept.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// Largest request body the server reads (answered 413 beyond).
pub(super) const MAX_BODY: u64 = 2 << 30;
/// Unread bodies up to this size are read and dropped to keep the
/// connection (Go's `maxPostHandlerReadBytes`); longer ones close it.
pub(super) const DISCARD_LIMIT: u64 = 256 << 10;
/// How long one read of a body may wait for bytes.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a lingering close waits for the client to go.
const LINGER: Duration = Duration::from_millis(500);
/// Longest line of a chunked body's framing (size line, trailer).
const MAX_LINE: usize = 4096;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (no `Content-Length`, or 0, and not chunked).
    None,
    /// `Content-Length: n`, n > 0.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// One request's head.
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: String,
    pub(super) range: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) if_match: Option<String>,
    /// Every header, names in lower case.
    pub(super) headers: Vec<(String, String)>,
    pub(super) framing: Framing,
    /// Why the body's framing is unusable (answered 400), if it is.
    pub(super) bad_framing: Option<&'static str>,
    /// `Expect: 100-continue`.
    pub(super) expect_continue: bool,
    /// `Connection: close`.
    pub(super) close: bool,
    /// Body bytes read so far (for the request log).
    pub(super) body_len: Cell<u64>,
}

impl Request {
    /// The first header named `name` (lower case).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request carries a body.
    pub(super) fn has_body(&self) -> bool {
        self.framing != Framing::None
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(super) enum BodyError {
    /// Longer than the cap: answer 413.
    TooLarge,
    /// Chunked framing that makes no sense: answer 400.
    Malformed(&'static str),
    /// The client went away or stalled: no answer.
    Io,
}

/// A client connection and what was read past the current request's head.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    buf: Vec<u8>,
    /// What is still on the wire of the current request's body.
    pending: Pending,
    /// `100 Continue` was sent for the current request.
    continued: bool,
    /// Bodies are read at most this fast (bytes/s), like one disk or
    /// network stream per request.
    pace: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Nothing,
    Bytes(u64),
    /// In a chunked body: bytes left in the current chunk, or `None`
    /// before the next size line.
    Chunked(Option<u64>),
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.stream.write(b)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            pending: Pending::Nothing,
            continued: false,
            pace: None,
        }
    }

    /// Reads request bodies at most `rate` bytes/s (`None`: as they come).
    pub(super) fn set_pace(&mut self, rate: Option<u64>) {
        self.pace = rate.filter(|r| *r > 0);
    }

    /// Reads the next request's head. `None` when the client closed the
    /// connection or sent more than 64 KiB of head.
    pub(super) fn read_request(&mut self) -> io::Result<Option<Request>> {
        let mut tmp = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&self.buf) {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).trim().to_string(),
                        )
                    })
                    .collect();
                let get = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                let (framing, bad_framing) = framing(&headers);
                let has = |name: &str, token: &str| {
                    headers.iter().any(|(k, v)| {
                        k == name && v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
                    })
                };
                let r = Request {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    range: get("range"),
                    auth: get("authorization"),
                    if_match: get("if-match"),
                    expect_continue: has("expect", "100-continue"),
                    close: has("connection", "close"),
                    framing,
                    bad_framing,
                    headers,
                    body_len: Cell::new(0),
                };
                self.buf.drain(..n);
                self.continued = false;
                self.pending = match (bad_framing, framing) {
                    (Some(_), _) | (None, Framing::None) => Pending::Nothing,
                    (None, Framing::Length(l)) => Pending::Bytes(l),
                    (None, Framing::Chunked) => Pending::Chunked(None),
                };
                return Ok(Some(r));
            }
            if self.buf.len() > 64 * 1024 {
                return Ok(None);
            }
            let n = self.stream.read(&mut tmp)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Whether bytes of a request were read but the request is incomplete.
    pub(super) fn has_partial_request(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads the current request's body, at most `cap` bytes (a longer one
    /// is [`BodyError::TooLarge`], checked before reading when the length
    /// is declared). With `stop_after`, returns after that many bytes,
    /// leaving the rest on the wire. Sends `100 Continue` first when the
    /// client waits for it.
    pub(super) fn read_body(
        &mut self,
        req: &Request,
        cap: u64,
        stop_after: Option<u64>,
    ) -> Result<Vec<u8>, BodyError> {
        if let Some(why) = req.bad_framing {
            return Err(BodyError::Malformed(why));
        }
        if let Framing::Length(l) = req.framing
            && l > cap
        {
            return Err(BodyError::TooLarge);
        }
        if req.has_body() && req.expect_continue && !self.continued {
            self.continued = true;
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| BodyError::Io)?;
        }
        self.stream
            .set_read_timeout(Some(BODY_READ_TIMEOUT))
            .map_err(|_| BodyError::Io)?;
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        let r = self.read_into(&mut out, cap, stop_after.unwrap_or(u64::MAX), req, started);
        // Back to the idle poll of `serve_conn`.
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(500)));
        r.map(|()| out)
    }

    fn read_into(
        &mut self,
        out: &mut Vec<u8>,
        cap: u64,
        stop_after: u64,
        req: &Request,
        started: std::time::Instant,
    ) -> Result<(), BodyError> {
        loop {
            if let Some(rate) = self.pace {
                // Not ahead of `rate`: wait until the bytes so far are due.
                let due = Duration::from_secs_f64(out.len() as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let room = stop_after.saturating_sub(out.len() as u64);
            if room == 0 {
                return Ok(());
            }
            match self.pending {
                Pending::Nothing | Pending::Bytes(0) => {
                    self.pending = Pending::Nothing;
                    return Ok(());
                }
                Pending::Bytes(left) => {
                    let n = self.take(out, left.min(room))?;
                    self.pending = match left - n {
                        0 => Pending::Nothing,
                        l => Pending::Bytes(l),
                    };
                }
                Pending::Chunked(None) => {
                    let line = self.line()?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size, 16)
                        .map_err(|_| BodyError::Malformed("bad chunk size line"))?;
                    if size == 0 {
                        // Trailer fields, then an empty line.
                        while !self.line()?.is_empty() {}
                        self.pending = Pending::Nothing;
                        return Ok(());
                    }
                    if (out.len() as u64).saturating_add(size) > cap {
                        return Err(BodyError::TooLarge);
                    }
                    self.pending = Pending::Chunked(Some(size));
                }
                Pending::Chunked(Some(0)) => {
                    // The CRLF that ends a chunk's data.
                    if !self.line()?.is_empty() {
                        return Err(BodyError::Malformed("chunk data longer than its size"));
                    }
                    self.pending = Pending::Chunked(None);
                }
                Pending::Chunked(Some(left)) => {
                    let n = self.take(out, left.min(room))?;
                    self.pending = Pending::Chunked(Some(left - n));
                }
            }
            req.body_len.set(out.len() as u64);
        }
    }

    /// Appends up to `max` (> 0) body bytes to `out`; how many.
    fn take(&mut self, out: &mut Vec<u8>, max: u64) -> Result<u64, BodyError> {
        if self.buf.is_empty() {
            self.fill()?;
        }
        let n = (self.buf.len() as u64).min(max) as usize;
        out.extend_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(n as u64)
    }

    /// One CRLF-terminated line of chunked framing, without the CRLF.
    fn line(&mut self) -> Result<String, BodyError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(BodyError::Malformed("chunk framing line too long"));
            }
            self.fill()?;
        }
    }

    /// Reads more bytes from the client into the buffer.
    fn fill(&mut self) -> Result<(), BodyError> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp).map_err(|_| BodyError::Io)?;
        if n == 0 {
            // The client closed the connection in the middle of a body.
            return Err(BodyError::Io);
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// After a handler answered and wants the connection kept: whether it
    /// can be (see the module's notes). A body still pending is read and
    /// dropped when that is cheap; otherwise the connection is closed,
    /// lingering so the client reads the answer.
    pub(super) fn finish(&mut self, req: &Request) -> bool {
        let pending = self.pending;
        let keep = match pending {
            // Where a body of unusable framing ends is unknown.
            _ if req.bad_framing.is_some() => false,
            Pending::Nothing => !req.close,
            _ if req.close || (req.expect_continue && !self.continued) => false,
            Pending::Bytes(l) if l <= DISCARD_LIMIT => {
                let r = self.read_body(req, DISCARD_LIMIT, None);
                r.is_ok() && !req.close
            }
            _ => false,
        };
        if !keep {
            self.linger();
        }
        keep
    }

    /// Closes our side for writing, then reads and drops what the client
    /// still sends for a moment: closing a socket with unread bytes sends
    /// a reset, which can destroy the answer before the client reads it.
    fn linger(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(100)));
        let until = Instant::now() + LINGER;
        let mut tmp = [0u8; 64 * 1024];
        while Instant::now() < until {
            match self.stream.read(&mut tmp) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }

    /// Ends the connection with a reset (`SO_LINGER` 0).
    pub(super) fn reset(&mut self) {
        let _ = nix::sys::socket::setsockopt(
            &self.stream,
            nix::sys::socket::sockopt::Linger,
            &libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        );
    }
}

/// The body's framing from the headers, or why it is unusable: both
/// `Transfer-Encoding` and `Content-Length` (request smuggling), a coding
/// other than `chunked` last, a `Content-Length` that is not one number.
fn framing(headers: &[(String, String)]) -> (Framing, Option<&'static str>) {
    let te: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "transfer-encoding")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let cl: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "content-length")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return (
                Framing::None,
                Some("both Transfer-Encoding and Content-Length"),
            );
        }
        if !te.last().is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            return (Framing::None, Some("unsupported Transfer-Encoding"));
        }
        return (Framing::Chunked, None);
    }
    let Some(first) = cl.first() else {
        return (Framing::None, None);
    };
    if cl.iter().any(|v| v != first) {
        return (Framing::None, Some("conflicting Content-Length values"));
    }
    match first.parse::<u64>() {
        Ok(0) => (Framing::None, None),
        Ok(n) => (Framing::Length(n), None),
        Err(_) => (Framing::None, Some("Content-Length is not a number")),
    }
}
