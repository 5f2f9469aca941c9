//! `shmfetch get`.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use nix::fcntl::{Flock, FlockArg};
use shmfetch::{ParallelReader, SourceOptions, SourceSpec};

use crate::cli::{GetArgs, Mode, NetArgs, Usage};
use crate::interrupt;
use shmfetch::range::format_size as human_size;

/// The part file of `NAME` written by process `PID` is `.NAME` + this + `PID`,
/// next to `NAME`.
const PART_MARK: &str = ".shmfetch-part-";

/// How much of a read-all buffer is written to the output between two
/// progress updates.
const WRITE_STEP: usize = 8 << 20;

/// Where the bytes go: stdout; a device, FIFO or other special file,
/// written in place; or a regular file, written as a temporary file that is
/// renamed into place on success (a failed download leaves no partial file
/// behind, and an existing file is only replaced by a complete one).
pub(crate) enum Output {
    Stdout(std::io::StdoutLock<'static>),
    Special {
        file: File,
        dest: PathBuf,
    },
    File {
        /// Locked (exclusive `flock`) for as long as it is written, so a
        /// cleanup never takes it for a dead process's.
        file: Flock<File>,
        tmp: PathBuf,
        dest: PathBuf,
    },
}

impl Output {
    /// Opens the output `spec` (see [`Output::open_sized`]).
    pub(crate) fn open(spec: &str) -> Result<Output> {
        Output::open_sized(spec, 0)
    }

    /// Opens the output `spec` for an object of `size` bytes. A regular
    /// file's directory must have room for all of it: checked here, before
    /// anything is downloaded. Removes the stale part files of dead
    /// processes in that directory first.
    pub(crate) fn open_sized(spec: &str, size: u64) -> Result<Output> {
        if spec == "-" {
            return Ok(Output::Stdout(std::io::stdout().lock()));
        }
        let dest = PathBuf::from(spec);
        let existing = std::fs::metadata(&dest).ok();
        if let Some(md) = &existing {
            if md.is_dir() {
                bail!("output {} is a directory", dest.display());
            }
            if !md.is_file() {
                // /dev/null, a FIFO, a terminal: never rename over it.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&dest)
                    .with_context(|| format!("opening {}", dest.display()))?;
                return Ok(Output::Special { file, dest });
            }
        }
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dest.file_name().context("output path has no file name")?;
        if !dir.is_dir() {
            bail!(
                "cannot write {}: directory {} does not exist",
                dest.display(),
                dir.display()
            );
        }
        for removed in remove_stale_parts(dir).unwrap_or_default() {
            tracing::warn!(file = %removed.display(), "removed the part file of a dead shmfetch");
        }
        let free =
            free_bytes(dir).with_context(|| format!("checking room for {}", dest.display()))?;
        if size > free {
            bail!(
                "not enough space for {} in {}: the object is {}, {} free",
                dest.display(),
                dir.display(),
                human_size(size),
                human_size(free)
            );
        }
        let tmp = dir.join(format!(
            ".{}{PART_MARK}{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // Opened without truncating and locked before it is touched: a
        // `get` in another PID namespace can have our pid, hence this name,
        // and its file is not ours to truncate or remove. O_NOFOLLOW: a
        // link planted at this predictable name is not followed.
        let file = interrupt::create_part(&tmp, || -> Result<Flock<File>> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .with_context(|| format!("creating {}", dest.display()))?;
            let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                anyhow::anyhow!(
                    "{} is being written by another shmfetch (its part file {} is locked: {e})",
                    dest.display(),
                    tmp.display()
                )
            })?;
            // Ours now: emptied, and an existing file's mode kept (a
            // read-only file stays so).
            let owned = file.set_len(0).and_then(|()| match &existing {
                Some(md) => file.set_permissions(md.permissions()),
                None => Ok(()),
            });
            if let Err(e) = owned {
                let _ = std::fs::remove_file(&tmp);
                return Err(anyhow::Error::from(e).context(format!("creating {}", dest.display())));
            }
            Ok(file)
        })?;
        Ok(Output::File { file, tmp, dest })
    }

    pub(crate) fn write_all(&mut self, b: &[u8]) -> Result<()> {
        match self {
            Output::Stdout(s) => s.write_all(b).context("writing to stdout"),
            Output::Special { file, dest } => file
                .write_all(b)
                .with_context(|| format!("writing {}", dest.display())),
            Output::File { file, dest, .. } => file
                .write_all(b)
                .with_context(|| format!("writing {}", dest.display())),
        }
    }

    /// Flushes the bytes to the output (a regular file: `fsync`, then the
    /// rename into place) and returns its name; on failure nothing is left.
    pub(crate) fn finish(self) -> Result<String> {
        match self {
            Output::Stdout(mut s) => {
                s.flush().context("flushing stdout")?;
                Ok("stdout".into())
            }
            Output::Special { dest, .. } => Ok(dest.display().to_string()),
            Output::File { file, tmp, dest } => {
                let done = file
                    .sync_all()
                    .with_context(|| format!("writing {} (fsync)", dest.display()));
                drop(file);
                interrupt::finish_part(|| {
                    done.and_then(|()| {
                        std::fs::rename(&tmp, &dest).with_context(|| {
                            format!("renaming the part file to {}", dest.display())
                        })
                    })
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    })
                })?;
                Ok(dest.display().to_string())
            }
        }
    }

    pub(crate) fn abandon(self) {
        if let Output::File { tmp, .. } = self {
            let _ = interrupt::finish_part(|| std::fs::remove_file(&tmp));
        }
    }
}

/// Free bytes for an unprivileged writer in the file system of `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir)?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// Removes the part files in `dir` (`.NAME.shmfetch-part-PID`) whose pid is
/// not a live process and whose lock no process holds (a live writer in
/// another PID namespace holds it). Returns the paths removed.
pub(crate) fn remove_stale_parts(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(PART_MARK))
            .and_then(|(_, pid)| pid.parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            continue;
        };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
            Ok(()) | Err(nix::errno::Errno::EPERM) => continue, // alive
            Err(_) => {}
        }
        let path = entry.path();
        // Never follow a symlink, never block on a FIFO.
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue; // its writer is alive
        };
        // Only the file we locked: it may have been renamed or replaced.
        let same = std::fs::symlink_metadata(&path).is_ok_and(|now| {
            use std::os::unix::fs::MetadataExt;
            lock.metadata()
                .is_ok_and(|m| m.ino() == now.ino() && m.dev() == now.dev())
        });
        if same && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
        drop(lock);
    }
    Ok(removed)
}

fn default_output(spec: &SourceSpec) -> String {
    let name = spec.display_name();
    let base = name.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    // A URL's query is not part of the name (an S3 key's `?` is).
    let base = match spec {
        SourceSpec::Http { .. } => base.split('?').next().unwrap_or(""),
        _ => base,
    };
    if base.is_empty() {
        "shmfetch.out".into()
    } else {
        base.to_string()
    }
}

/// What the transfer flags make: the HTTP settings and the retry policy.
pub(crate) struct Net {
    pub http: shmfetch::source::HttpConfig,
    pub retry: shmfetch::source::retry::RetryConfig,
}

/// Checks the transfer flags that clap cannot: a bad one is a usage error
/// (exit 2).
pub(crate) fn check_net(a: &NetArgs) -> Result<Net> {
    let max = shmfetch::worker::MAX_WORKERS;
    if a.workers == 0 || a.workers > max {
        return Err(Usage(format!(
            "--workers must be between 1 and {max}, got {}",
            a.workers
        ))
        .into());
    }
    if a.attempts == Some(0) {
        return Err(Usage("--attempts must be at least 1".into()).into());
    }
    let retry_timeout = Duration::try_from_secs_f64(a.retry_timeout)
        .map_err(|_| Usage("--retry-timeout must be a number of seconds, 0 or more".into()))?;
    if let Some(e) = &a.endpoint {
        check_endpoint(e).map_err(|why| Usage(format!("--endpoint {e:?}: {why}")))?;
    }
    let secs = |v: f64, what: &str| {
        Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Usage(format!("--{what} must be a positive number of seconds")))
    };
    Ok(Net {
        http: shmfetch::source::HttpConfig {
            read_timeout: secs(a.read_timeout, "read-timeout")?,
            connect_timeout: secs(a.connect_timeout, "connect-timeout")?,
            ..Default::default()
        },
        retry: shmfetch::source::retry::RetryConfig {
            attempts: a.attempts.unwrap_or(shmfetch::reader::DEFAULT_ATTEMPTS),
            max_elapsed: retry_timeout,
            ..Default::default()
        },
    })
}

/// Checks --chunk-size (a bad one is a usage error).
fn check_chunk(chunk_size: Option<u64>) -> Result<()> {
    if let Some(c) = chunk_size {
        let max = shmfetch::reader::MAX_CHUNK_SIZE;
        if c == 0 {
            return Err(Usage("--chunk-size must be at least 1 byte".into()).into());
        }
        if c > max {
            return Err(Usage(format!(
                "--chunk-size {} is larger than the {} maximum",
                human_size(c),
                human_size(max)
            ))
            .into());
        }
    }
    Ok(())
}

fn check_endpoint(e: &str) -> std::result::Result<(), &'static str> {
    let lower = e.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(())
    } else {
        Err("endpoint must start with http:// or https://")
    }
}

/// The settings for `source`: AIStore's endpoint and token (read only for
/// an `ais://` source), S3's (environment and flags, for `s3://`).
pub(crate) fn source_options(
    source: &str,
    endpoint: Option<&str>,
    s3: &crate::s3_args::S3Args,
) -> Result<SourceOptions> {
    let is_s3 = source.to_ascii_lowercase().starts_with("s3://");
    if is_s3 && endpoint.is_some() {
        return Err(Usage(
            "--endpoint is the AIStore gateway; for an s3:// object use --endpoint-url".into(),
        )
        .into());
    }
    if !is_s3 && s3.endpoint_url.is_some() {
        return Err(Usage(
            "--endpoint-url is for s3:// objects; the AIStore gateway is --endpoint".into(),
        )
        .into());
    }
    if is_s3 {
        warn_if_ais_was_meant();
        let mut opts = SourceOptions {
            s3: shmfetch::source::s3::S3Options::from_env(),
            ..SourceOptions::default()
        };
        s3.apply(&mut opts.s3);
        return Ok(opts);
    }
    if !source.starts_with("ais://") {
        return Ok(SourceOptions::default());
    }
    let mut opts = SourceOptions::from_env()?;
    match endpoint {
        Some(e) => opts.endpoint = Some(e.to_string()),
        None => {
            if let Some(e) = &opts.endpoint {
                check_endpoint(e).map_err(|why| anyhow!("AIS_ENDPOINT {e:?}: {why}"))?;
            }
        }
    }
    Ok(opts)
}

/// `s3://` once meant an AIStore remote bucket when `AIS_ENDPOINT` was
/// set; it now goes to S3. Says so once, at debug level unless the
/// variable is set.
pub fn warn_if_ais_was_meant() {
    if std::env::var("AIS_ENDPOINT").is_ok_and(|v| !v.is_empty()) {
        tracing::warn!(
            target: "shmfetch",
            "s3:// reads from S3 directly (AIS_ENDPOINT is not used); an AIStore remote \
             bucket is ais://@aws/BUCKET/OBJECT"
        );
    }
}

/// An http(s) URL as given, with literal spaces percent-encoded (HTTP
/// request lines cannot carry them; `curl` and browsers encode them too).
pub(crate) fn encode_spaces(source: &str) -> String {
    let lower = source.to_ascii_lowercase();
    if (lower.starts_with("http://") || lower.starts_with("https://")) && source.contains(' ') {
        source.replace(' ', "%20")
    } else {
        source.to_string()
    }
}

/// `HOST:PORT` of the server the first request of `spec` goes to.
fn server_of(spec: &SourceSpec) -> Option<String> {
    let url = match spec {
        SourceSpec::AiStore { endpoint, .. } => endpoint,
        SourceSpec::Http { url } => url,
        SourceSpec::S3 { config, .. } => &config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region)),
        _ => return None,
    };
    let u = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

/// The library's error with what to do about a transport failure: which
/// server refused, that a port does not speak TLS, which flag a timeout is.
fn explain(e: shmfetch::Error, spec: &SourceSpec, a: &GetArgs) -> anyhow::Error {
    let hint = match e.root() {
        shmfetch::Error::Transport { range, message, .. } => {
            let m = message.to_ascii_lowercase();
            let server = server_of(spec);
            if m.contains("connection refused") {
                match (range, server) {
                    (None, Some(s)) => Some(format!("nothing listens at {s}")),
                    _ => None,
                }
            } else if m.contains("invalidcontenttype") || m.contains("corrupt message") {
                Some(format!(
                    "TLS failed: {} does not speak TLS; is it a plain http:// port?",
                    server.as_deref().unwrap_or("the server")
                ))
            } else if range.is_none()
                && m.contains("unexpected end of file")
                && matches!(spec, SourceSpec::Http { url } if url.starts_with("https://"))
            {
                Some(format!(
                    "{} closed the connection during the TLS handshake; is it a plain http:// port?",
                    server.as_deref().unwrap_or("the server")
                ))
            } else if m.contains("timeout") || m.contains("timed out") {
                if m.contains("connect") {
                    Some(format!(
                        "no connection within {} s (--connect-timeout)",
                        a.net.connect_timeout
                    ))
                } else {
                    Some(format!(
                        "no data for {} s (--read-timeout)",
                        a.net.read_timeout
                    ))
                }
            } else {
                None
            }
        }
        _ => None,
    };
    match hint {
        Some(h) => anyhow!("{e} ({h})"),
        None => e.into(),
    }
}

/// The progress bar on stderr: hidden when quiet or when stderr is not a
/// terminal; ticks steadily, so it moves from the start even while no byte
/// has arrived.
pub(crate) fn progress_bar(size: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(size);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:8} {spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix("fetching");
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

pub fn run(a: GetArgs, quiet: bool) -> Result<()> {
    let start = Instant::now();
    let net = check_net(&a.net)?;
    check_chunk(a.chunk_size)?;
    let source = encode_spaces(&a.source);
    let opts = source_options(&source, a.net.endpoint.as_deref(), &a.net.s3)?;
    let spec = SourceSpec::parse_with(&source, &opts)?;
    let out_spec = a.output.clone().unwrap_or_else(|| default_output(&spec));
    let mut b = ParallelReader::builder(spec.clone())
        .workers(a.net.workers)
        .retry(net.retry)
        .http(net.http)
        .direct(a.direct);
    if let Some(c) = a.chunk_size {
        b = b.chunk_size(c);
    }
    let reader = b.build().map_err(|e| explain(e, &spec, &a))?;
    let size = reader.size();
    let mut out = Output::open_sized(&out_spec, size)?;
    let bar = progress_bar(size, quiet);
    interrupt::set_bar(Some(bar.clone()).filter(|b| !b.is_hidden()));
    let res = (|| -> Result<()> {
        match a.mode {
            Mode::ReadAll => {
                let buf = reader
                    .read_all_with_progress(&mut |n| bar.inc(n))
                    .map_err(|e| explain(e, &spec, &a))?;
                bar.set_prefix("writing");
                bar.set_position(0);
                for piece in buf.chunks(WRITE_STEP) {
                    out.write_all(piece)?;
                    bar.inc(piece.len() as u64);
                }
            }
            Mode::Stream => {
                let chunks = reader.create_iter(0).map_err(|e| explain(e, &spec, &a))?;
                for chunk in chunks {
                    let chunk = chunk.map_err(|e| explain(e, &spec, &a))?;
                    out.write_all(&chunk)?;
                    bar.inc(chunk.len() as u64);
                }
            }
        }
        Ok(())
    })();
    let res = match res {
        Ok(()) => out.finish(),
        Err(e) => {
            out.abandon();
            Err(e)
        }
    };
    bar.finish_and_clear();
    interrupt::set_bar(None);
    let dest = res?;
    // Wall time: start-up, HEAD, fetch, write and rename.
    let secs = start.elapsed().as_secs_f64();
    if !quiet {
        let _ = writeln!(
            std::io::stderr(),
            "{size} bytes to {dest} in {secs:.3} s ({:.1} MiB/s, {} workers, chunk {} bytes, {}, peak RSS {} MiB)",
            size as f64 / (1 << 20) as f64 / secs.max(1e-9),
            reader.pool().workers(),
            reader.chunk_size(),
            match a.mode {
                Mode::ReadAll => "read-all",
                Mode::Stream => "stream",
            },
            peak_rss_mib()
        );
    }
    Ok(())
}

/// Peak resident set of this process in MiB (its mapping of the shared
/// segment included).
pub(crate) fn peak_rss_mib() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss() as u64 / 1024)
        .unwrap_or(0)
}
