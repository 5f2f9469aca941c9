//! `shmfetch`: fetch an object into a file or stdout through forked workers
//! and /dev/shm; serve a directory through the AIStore read API.

#[path = "../log_filter.rs"]
mod log_filter;

mod cli;
mod dcp;
mod get;
mod serve;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let filter = if args.verbose > 0 {
        "shmfetch=debug"
    } else {
        "shmfetch=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(log_filter::log_filter(filter))
        .with_writer(std::io::stderr)
        .init();
    let result = match args.command {
        cli::Command::Get(a) => get::run(a),
        cli::Command::Serve(a) => serve::run(a),
        cli::Command::Dcp(c) => dcp::run(c),
        cli::Command::Gc(a) => gc(&a),
    };
    if let Err(e) = result {
        eprintln!("shmfetch: error: {e:#}");
        std::process::exit(1);
    }
}

/// `shmfetch gc [DIR]`: removes the segments in DIR that no process owns.
fn gc(a: &cli::GcArgs) -> anyhow::Result<()> {
    let dir = a.dir();
    let removed = shmfetch::shm::try_remove_orphans(&dir)?;
    for r in &removed {
        println!("removed {}", dir.join(r).display());
    }
    eprintln!(
        "{} orphaned segment(s) removed from {}",
        removed.len(),
        dir.display()
    );
    Ok(())
}
