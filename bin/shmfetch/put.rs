//! `shmfetch put`.

use std::fs::File;
use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{Context, Result};
use shmfetch::range::format_size as human_size;
use shmfetch::store::{DEFAULT_PART_SIZE, MAX_PART_SIZE, MAX_PARTS, Upload, UploadOptions};
use shmfetch::{PoolConfig, SourceSpec, WorkerPool};

use crate::cli::{PutArgs, Usage};
use crate::get::{check_net, encode_spaces, progress_bar, source_options};
use crate::interrupt;

/// The part size: the flag, else 8 MiB, raised (to whole MiB) when a file
/// of `size` bytes would need more than [`MAX_PARTS`] parts.
fn part_size(flag: Option<u64>, size: Option<u64>) -> Result<u64> {
    if let Some(p) = flag {
        if p == 0 || p > MAX_PART_SIZE {
            return Err(Usage(format!(
                "--part-size must be between 1 byte and {}",
                human_size(MAX_PART_SIZE)
            ))
            .into());
        }
        return Ok(p);
    }
    let needed = size.map_or(0, |s| s.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20);
    Ok(DEFAULT_PART_SIZE.max(needed))
}

/// `dest`, with the source's file name appended when it ends in `/` or is
/// an existing local directory (like `cp`).
fn destination(source: &str, dest: &str) -> Result<String> {
    let local_dir = !dest.contains("://") && std::path::Path::new(dest).is_dir();
    if local_dir && !dest.ends_with('/') {
        return destination(source, &format!("{dest}/"));
    }
    if !dest.ends_with('/') {
        return Ok(dest.to_string());
    }
    let name = std::path::Path::new(source)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|_| source != "-")
        .ok_or_else(|| {
            Usage(format!(
                "{dest} ends in /: name the object to write stdin to"
            ))
        })?;
    Ok(format!("{dest}{name}"))
}

pub fn run(a: PutArgs, quiet: bool) -> Result<()> {
    let start = Instant::now();
    let net = check_net(&a.net)?;
    let dest = encode_spaces(&destination(&a.source, &a.dest)?);
    let opts = source_options(&dest, a.net.endpoint.as_deref(), &a.net.s3)?;
    let spec = SourceSpec::parse_with(&dest, &opts)?;
    let (mut input, size): (Box<dyn Read>, Option<u64>) = if a.source == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = File::open(&a.source).with_context(|| format!("opening {}", a.source))?;
        let meta = f
            .metadata()
            .with_context(|| format!("reading {}", a.source))?;
        if meta.is_dir() {
            return Err(Usage(format!("{} is a directory", a.source)).into());
        }
        let size = meta.is_file().then_some(meta.len());
        (Box::new(f), size)
    };
    let part = part_size(a.part_size, size)?;
    if dest.starts_with("s3://")
        && let Some(n) = size
        && n.div_ceil(part) > MAX_PARTS
    {
        return Err(Usage(format!(
            "{} bytes in parts of {part} bytes is more than S3's {MAX_PARTS} parts: give a --part-size of at least {}",
            n,
            n.div_ceil(MAX_PARTS)
        ))
        .into());
    }
    let pool = WorkerPool::with_config(PoolConfig {
        workers: a.net.workers,
        http: net.http,
        ..PoolConfig::default()
    })?;
    let mut up = Upload::new(
        &pool,
        spec,
        UploadOptions {
            part_size: part,
            retry: net.retry,
            ..Default::default()
        },
    )?;
    interrupt::watch_upload(Some(up.abort_handle()));
    let bar = progress_bar(size.unwrap_or(0), quiet);
    bar.set_prefix("sending");
    interrupt::set_bar(Some(bar.clone()).filter(|b| !b.is_hidden()));
    // A part at a time from the input, so the bar moves as parts go out.
    let res = (|| -> Result<shmfetch::store::UploadSummary> {
        loop {
            let mut limited = (&mut input).take(part);
            let n = up.fill_from(&mut limited)?;
            bar.set_position(up.sent());
            if n == 0 {
                break;
            }
        }
        bar.set_prefix("finishing");
        Ok(up.finish()?)
    })();
    bar.finish_and_clear();
    interrupt::set_bar(None);
    interrupt::watch_upload(None);
    let summary = res?;
    let secs = start.elapsed().as_secs_f64();
    if !quiet {
        let _ = writeln!(
            std::io::stderr(),
            "{} bytes to {dest} in {secs:.3} s ({:.1} MiB/s, {} workers, part {} bytes, {} parts{})",
            summary.bytes,
            summary.bytes as f64 / (1 << 20) as f64 / secs.max(1e-9),
            pool.workers(),
            part,
            summary.parts,
            match summary.retries {
                0 => String::new(),
                n => format!(", {n} retries"),
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_for_files_past_ten_thousand_parts() {
        assert_eq!(part_size(None, None).unwrap(), DEFAULT_PART_SIZE);
        assert_eq!(part_size(None, Some(1 << 30)).unwrap(), DEFAULT_PART_SIZE);
        let big = 200u64 << 30; // 200 GiB: 8 MiB parts would be 25600
        let p = part_size(None, Some(big)).unwrap();
        assert!(
            big.div_ceil(p) <= MAX_PARTS && p.is_multiple_of(1 << 20),
            "{p}"
        );
        assert_eq!(part_size(Some(6 << 20), Some(big)).unwrap(), 6 << 20);
        assert!(part_size(Some(0), None).is_err());
    }

    #[test]
    fn a_destination_ending_in_a_slash_takes_the_file_name() {
        assert_eq!(
            destination("/a/b.bin", "s3://bk/dir/").unwrap(),
            "s3://bk/dir/b.bin"
        );
        assert_eq!(destination("/a/b.bin", "s3://bk/x").unwrap(), "s3://bk/x");
        let dir = std::env::temp_dir();
        let d = dir.to_str().unwrap();
        assert_eq!(
            destination("/a/b.bin", d).unwrap(),
            format!("{}/b.bin", d.trim_end_matches('/'))
        );
        assert!(destination("-", "s3://bk/dir/").is_err());
    }
}
