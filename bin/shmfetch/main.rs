//! `shmfetch`: fetch an object into a file or stdout through forked workers
//! and /dev/shm; serve a directory through the AIStore read API.
//!
//! Exit status: 0 on success and when stdout's reader went away (EPIPE, like
//! `rg`), 1 on failure, 2 on a usage error, 128 + signo on SIGINT, SIGTERM
//! or SIGHUP (see `interrupt`).

#[path = "../log_filter.rs"]
mod log_filter;
#[path = "../s3_args.rs"]
mod s3_args;

mod cli;
mod dcp;
mod get;
mod interrupt;
mod put;
mod serve;

use std::io::{IsTerminal, Write};

use clap::Parser;

fn main() {
    // First, before any thread exists: every later thread inherits the
    // blocked signals, so only the signal thread sees them.
    let signals = interrupt::install();
    let args = cli::Cli::parse();
    let filter = if args.verbose > 0 {
        "shmfetch=debug"
    } else {
        "shmfetch=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(log_filter::log_filter(filter))
        .with_writer(|| LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = signals.and_then(|()| match args.command {
        cli::Command::Get(a) => get::run(a, args.quiet),
        cli::Command::Put(a) => put::run(a, args.quiet),
        cli::Command::Serve(a) => serve::run(a),
        cli::Command::Dcp(c) => dcp::run(c),
        cli::Command::Gc(a) => gc(&a, args.quiet),
    });
    interrupt::exit(|| match result {
        Ok(()) => 0,
        Err(e) => report(&e),
    })
}

/// stderr for log lines, written around the progress bar when one is on
/// the terminal: the bar is cleared, the line written, the bar drawn again
/// (a retry's warning is not glued to a bar frame and drawn over).
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over each event's line in one piece.
        let write = || std::io::stderr().write_all(b);
        match interrupt::bar() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
        .map(|()| b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Prints `e` once and returns the exit status for it: 0 for a broken pipe
/// (the reader of our output is gone: nothing to say), 2 for a usage error,
/// else 1.
fn report(e: &anyhow::Error) -> i32 {
    if is_broken_pipe(e) {
        return 0;
    }
    let _ = writeln!(std::io::stderr(), "shmfetch: error: {e:#}");
    if is_usage(e) { 2 } else { 1 }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(
                c.downcast_ref::<shmfetch::Error>(),
                Some(shmfetch::Error::Io {
                    errno: Some(libc::EPIPE),
                    ..
                })
            )
    })
}

fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<cli::Usage>()
            || matches!(
                c.downcast_ref::<shmfetch::Error>(),
                Some(shmfetch::Error::InvalidConfig(_))
            )
    })
}

/// `shmfetch gc [DIR]`: removes the segments in DIR that no process owns,
/// and the part files of dead `get`s.
fn gc(a: &cli::GcArgs, quiet: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = a.dir();
    let segments = shmfetch::shm::try_remove_orphans(&dir)?;
    let parts =
        get::remove_stale_parts(&dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut out = std::io::stdout().lock();
    for r in &segments {
        writeln!(out, "removed {}", dir.join(r).display())?;
    }
    for p in &parts {
        writeln!(out, "removed {}", p.display())?;
    }
    out.flush()?;
    if !quiet {
        let _ = writeln!(
            std::io::stderr(),
            "{} orphaned segment(s) and {} part file(s) removed from {}",
            segments.len(),
            parts.len(),
            dir.display()
        );
    }
    Ok(())
}
