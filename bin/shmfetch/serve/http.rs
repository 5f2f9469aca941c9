//! Just enough HTTP/1.1 for the AIStore read API, on `std::net` and
//! `httparse`: bounded request heads, keep-alive, small fixed responses,
//! and file bodies streamed from disk with `sendfile(2)`: nothing per
//! connection grows with the object.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use shmfetch::range::ByteRange;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 64;
/// How often a blocked read wakes up to look at the queue.
const POLL: Duration = Duration::from_millis(100);
/// An idle keep-alive connection is closed after this long.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// A request head must arrive completely within this long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A new connection keeps its thread this long before yielding it to a
/// queued one, even without a request.
const FRESH_GRACE: Duration = Duration::from_secs(1);
/// A blocked write (a client that stopped reading) fails after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// One request head.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path as sent (percent-encoded).
    pub path: String,
    /// The query as sent, without `?`.
    pub query: String,
    pub range: Option<String>,
    pub auth: Option<String>,
    pub host: Option<String>,
    /// The connection ends after this response (asked by the client, an
    /// HTTP/1.0 client, a request with a body, or the server being busy).
    pub close: bool,
    /// The request announces a body (which is never read).
    pub has_body: bool,
}

/// What reading the next request gave.
#[derive(Debug)]
pub enum Next {
    Request(Request),
    /// The peer closed, or the connection went idle and was given up.
    Closed,
    /// A head that cannot be served: answer this status, then close.
    Bad(u16, &'static str),
}

/// A client connection with its (bounded) head buffer.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Requests answered on this connection.
    pub served: u64,
}

impl Conn {
    /// Wraps an accepted stream: no Nagle delay, reads that wake up every
    /// [`POLL`], writes that give up after [`WRITE_TIMEOUT`].
    pub fn new(stream: TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            served: 0,
        })
    }

    /// The local address the client reached us on.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.stream.local_addr().ok().map(|a| a.ip())
    }

    /// Reads the next request head. An idle connection is given up after
    /// [`KEEPALIVE_IDLE`], or as soon as `busy()` says other connections
    /// wait for a thread (after [`FRESH_GRACE`] for one that has not sent
    /// a request yet); a head still incomplete after [`HEAD_TIMEOUT`] is
    /// given up too.
    pub fn next_request(&mut self, busy: &dyn Fn() -> bool) -> io::Result<Next> {
        let since = Instant::now();
        let mut tmp = [0u8; 4096];
        loop {
            if !self.buf.is_empty() {
                match parse(&self.buf) {
                    Ok(Some((n, req))) => {
                        self.buf.drain(..n);
                        return Ok(Next::Request(req));
                    }
                    Ok(None) => {}
                    Err((status, why)) => return Ok(Next::Bad(status, why)),
                }
            }
            let room = MAX_HEAD.saturating_sub(self.buf.len()).min(tmp.len());
            if room == 0 {
                return Ok(Next::Bad(431, "request head too large"));
            }
            match self.stream.read(&mut tmp[..room]) {
                Ok(0) => return Ok(Next::Closed),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let waited = since.elapsed();
                    let give_up = if self.buf.is_empty() {
                        waited >= KEEPALIVE_IDLE
                            || (busy() && (self.served > 0 || waited >= FRESH_GRACE))
                    } else {
                        waited >= HEAD_TIMEOUT
                    };
                    if give_up {
                        return Ok(Next::Closed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes a status line, `headers`, `Content-Length` and, when the
    /// request asked for it, `Connection: close`.
    pub fn write_head(
        &mut self,
        req: &Request,
        status: u16,
        headers: &[(&str, String)],
        content_length: u64,
    ) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str(&format!("Content-Length: {content_length}\r\n"));
        if req.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes())
    }

    /// A complete response with a small body (empty, or an AIS JSON error:
    /// on HEAD the JSON goes into `Hdr-Error`, as AIStore does).
    pub fn respond(
        &mut self,
        req: &Request,
        status: u16,
        extra: &[(&str, String)],
        json: &str,
    ) -> io::Result<()> {
        let mut headers = extra.to_vec();
        if !json.is_empty() {
            headers.push(("Content-Type", "application/json".into()));
            headers.push(("X-Content-Type-Options", "nosniff".into()));
        }
        if req.method == "HEAD" {
            if status >= 400 && !json.is_empty() {
                headers.push(("Hdr-Error", json.replace(['\r', '\n'], " ")));
            }
            return self.write_head(req, status, &headers, 0);
        }
        self.write_head(req, status, &headers, json.len() as u64)?;
        self.stream.write_all(json.as_bytes())
    }

    /// Sends `range` of `file` as the body: `sendfile(2)`, the kernel
    /// copying from the page cache to the socket; a plain read/write loop
    /// through a 64 KiB buffer where the file system cannot.
    ///
    /// # Errors
    /// A socket error, or `UnexpectedEof` when the file shrank: the body
    /// is then short of its `Content-Length`, so the caller must close.
    pub fn send_file(&mut self, file: &File, range: ByteRange) -> io::Result<()> {
        let shrank = |pos: u64| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file shrank: sent {} of {} bytes",
                    pos - range.start,
                    range.len()
                ),
            )
        };
        let mut off = libc::off_t::try_from(range.start)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let mut pos = range.start;
        while pos < range.end {
            let n = usize::try_from(range.end - pos)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            match nix::sys::sendfile::sendfile(&self.stream, file, Some(&mut off), n) {
                Ok(0) => return Err(shrank(pos)),
                Ok(r) => pos += r as u64,
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS)
                    if pos == range.start =>
                {
                    return self.copy_file(file, range);
                }
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        Ok(())
    }

    /// [`Conn::send_file`] without `sendfile`.
    fn copy_file(&mut self, file: &File, range: ByteRange) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        let mut pos = range.start;
        while pos < range.end {
            let n = usize::try_from(range.end - pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let got = file.read_at(&mut buf[..n], pos)?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "file shrank: sent {} of {} bytes",
                        pos - range.start,
                        range.len()
                    ),
                ));
            }
            self.stream.write_all(&buf[..got])?;
            pos += got as u64;
        }
        Ok(())
    }

    /// Closes both directions.
    pub fn close(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// Parses one request head from `buf`: `Ok(None)` while incomplete.
fn parse(buf: &[u8]) -> Result<Option<(usize, Request)>, (u16, &'static str)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err((431, "too many request headers"));
        }
        Err(_) => return Err((400, "malformed request")),
    };
    let get = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err((400, "request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let connection = get("connection").unwrap_or_default().to_ascii_lowercase();
    let http10 = req.version == Some(0);
    let has_body =
        get("transfer-encoding").is_some() || get("content-length").is_some_and(|v| v != "0");
    let close = has_body
        || connection.split(',').any(|t| t.trim() == "close")
        || (http10 && !connection.split(',').any(|t| t.trim() == "keep-alive"));
    Ok(Some((
        n,
        Request {
            method: req.method.unwrap_or("").to_string(),
            path: path.to_string(),
            query: query.to_string(),
            range: get("range"),
            auth: get("authorization"),
            host: get("host"),
            close,
            has_body,
        },
    )))
}

/// The reason phrase of the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

/// AIStore's JSON error body (`cmn/err.go`).
pub fn ais_error(status: u16, tcode: &str, message: &str, req: &Request) -> String {
    serde_json::json!({
        "tcode": tcode, "message": message, "method": req.method,
        "url_path": req.path, "status": status,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Request {
        match parse(raw.as_bytes()) {
            Ok(Some((n, r))) => {
                assert_eq!(n, raw.len());
                r
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn file_bodies_by_sendfile_and_by_copy() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &data).unwrap();
        let file = File::open(&p).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut conn = Conn::new(l.accept().unwrap().0).unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        conn.send_file(
            &file,
            ByteRange {
                start: 5,
                end: 200_005,
            },
        )
        .unwrap();
        conn.copy_file(
            &file,
            ByteRange {
                start: 1,
                end: 100_000,
            },
        )
        .unwrap();
        // Past the end (a file that shrank): an error, never a hang.
        let past = ByteRange {
            start: 299_990,
            end: 300_100,
        };
        let e = conn.send_file(&file, past).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = conn.copy_file(&file, past).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        conn.close();
        drop(conn);
        let got = reader.join().unwrap();
        let mut want = data[5..200_005].to_vec();
        want.extend_from_slice(&data[1..100_000]);
        want.extend_from_slice(&data[299_990..]);
        want.extend_from_slice(&data[299_990..]);
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }

    #[test]
    fn heads_parse_with_keep_alive_rules() {
        let r = req(
            "GET /v1/objects/b/o?provider=ais HTTP/1.1\r\nHost: h:1\r\nRange: bytes=0-9\r\n\r\n",
        );
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.query.as_str()),
            ("GET", "/v1/objects/b/o", "provider=ais")
        );
        assert_eq!(r.range.as_deref(), Some("bytes=0-9"));
        assert_eq!(r.host.as_deref(), Some("h:1"));
        assert!(!r.close && !r.has_body);
        assert!(req("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").close);
        assert!(req("GET / HTTP/1.0\r\n\r\n").close);
        assert!(!req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").close);
        let r = req("GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n");
        assert!(r.has_body && r.close);
        assert!(!req("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").has_body);
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None)));
        assert!(matches!(
            parse(b"GET\x01 / HTTP/1.1\r\n\r\n"),
            Err((400, _))
        ));
        assert!(matches!(
            parse(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            Err((400, _))
        ));
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(
            parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err((431, _))
        ));
    }
}
