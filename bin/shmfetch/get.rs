//! `shmfetch get`.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use shmfetch::{ParallelReader, SourceOptions, SourceSpec};

use crate::cli::{GetArgs, Mode};

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
        file: File,
        tmp: PathBuf,
        dest: PathBuf,
    },
}

impl Output {
    pub(crate) fn open(spec: &str) -> Result<Output> {
        if spec == "-" {
            return Ok(Output::Stdout(std::io::stdout().lock()));
        }
        let dest = PathBuf::from(spec);
        if let Ok(md) = std::fs::metadata(&dest) {
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
        let tmp = dir.join(format!(
            ".{}.shmfetch-part-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Output::File { file, tmp, dest })
    }

    pub(crate) fn write_all(&mut self, b: &[u8]) -> Result<()> {
        match self {
            Output::Stdout(s) => s.write_all(b).context("writing to stdout"),
            Output::Special { file, dest } => file
                .write_all(b)
                .with_context(|| format!("writing {}", dest.display())),
            Output::File { file, tmp, .. } => file
                .write_all(b)
                .with_context(|| format!("writing {}", tmp.display())),
        }
    }

    pub(crate) fn finish(self) -> Result<String> {
        match self {
            Output::Stdout(mut s) => {
                s.flush().context("flushing stdout")?;
                Ok("stdout".into())
            }
            Output::Special { dest, .. } => Ok(dest.display().to_string()),
            Output::File { file, tmp, dest } => {
                file.sync_all().ok();
                drop(file);
                std::fs::rename(&tmp, &dest)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
                Ok(dest.display().to_string())
            }
        }
    }

    pub(crate) fn abandon(self) {
        if let Output::File { tmp, .. } = self {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn default_output(spec: &SourceSpec) -> String {
    let name = spec.display_name();
    let base = name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .split('?')
        .next()
        .unwrap_or("");
    if base.is_empty() {
        "shmfetch.out".into()
    } else {
        base.to_string()
    }
}

pub fn run(a: GetArgs) -> Result<()> {
    let mut opts = SourceOptions::from_env()?;
    if let Some(e) = a.endpoint {
        opts.endpoint = Some(e);
    }
    let spec = SourceSpec::parse_with(&a.source, &opts)?;
    let out_spec = a.output.clone().unwrap_or_else(|| default_output(&spec));
    let secs = |v: f64, what: &str| {
        std::time::Duration::try_from_secs_f64(v)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("--{what} must be a positive number of seconds"))
    };
    let http = shmfetch::source::HttpConfig {
        read_timeout: secs(a.read_timeout, "read-timeout")?,
        connect_timeout: secs(a.connect_timeout, "connect-timeout")?,
        ..Default::default()
    };
    let retry = shmfetch::source::retry::RetryConfig {
        attempts: a.attempts.unwrap_or(shmfetch::reader::DEFAULT_ATTEMPTS),
        max_elapsed: std::time::Duration::try_from_secs_f64(a.retry_timeout)
            .ok()
            .filter(|_| a.retry_timeout >= 0.0)
            .context("--retry-timeout must be a number of seconds, 0 or more")?,
        ..Default::default()
    };
    let mut b = ParallelReader::builder(spec)
        .workers(a.workers)
        .retry(retry)
        .http(http);
    if let Some(c) = a.chunk_size {
        b = b.chunk_size(c);
    }
    let reader = b.build()?;
    let size = reader.size();
    let bar = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(size);
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut out = Output::open(&out_spec)?;
    let start = Instant::now();
    let res = (|| -> Result<()> {
        match a.mode {
            Mode::ReadAll => {
                let buf = reader.read_all_with_progress(&mut |n| bar.inc(n))?;
                out.write_all(&buf)?;
            }
            Mode::Stream => {
                for chunk in reader.create_iter(0)? {
                    let chunk = chunk?;
                    out.write_all(&chunk)?;
                    bar.inc(chunk.len() as u64);
                }
            }
        }
        Ok(())
    })();
    bar.finish_and_clear();
    if let Err(e) = res {
        out.abandon();
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    let dest = out.finish()?;
    if size > 0 && secs <= 0.0 {
        bail!("clock went backwards");
    }
    eprintln!(
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
    Ok(())
}

/// Peak resident set of this process in MiB (its mapping of the shared
/// segment included).
fn peak_rss_mib() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| u.max_rss() as u64 / 1024)
        .unwrap_or(0)
}
