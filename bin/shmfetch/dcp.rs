//! `shmfetch dcp ls|export|get`.

use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use shmfetch::dcp::{Checkpoint, Entry, Metadata, ReaderKind, StorageReader, export_safetensors};
use shmfetch::{SourceOptions, WorkerPool};

use crate::cli::{CkptArgs, DcpCommand, DcpExportArgs, DcpGetArgs, DcpLsArgs, ReaderArg};
use crate::get::Output;

pub fn run(c: DcpCommand) -> Result<()> {
    match c {
        DcpCommand::Ls(a) => ls(a),
        DcpCommand::Export(a) => export(a),
        DcpCommand::Get(a) => get(a),
    }
}

fn open(a: &CkptArgs) -> Result<Checkpoint> {
    let mut opts = SourceOptions::from_env()?;
    let is_s3 = a.ckpt.to_ascii_lowercase().starts_with("s3://");
    if is_s3 && a.endpoint.is_some() {
        return Err(crate::cli::Usage(
            "--endpoint is the AIStore gateway; for an s3:// checkpoint use --endpoint-url".into(),
        )
        .into());
    }
    if !is_s3 && a.s3.endpoint_url.is_some() {
        return Err(crate::cli::Usage(
            "--endpoint-url is for s3:// checkpoints; the AIStore gateway is --endpoint".into(),
        )
        .into());
    }
    if is_s3 {
        crate::get::warn_if_ais_was_meant();
    }
    if let Some(e) = &a.endpoint {
        opts.endpoint = Some(e.clone());
    }
    a.s3.apply(&mut opts.s3);
    if a.workers == 0 || a.workers > shmfetch::worker::MAX_WORKERS {
        bail!(
            "--workers must be between 1 and {}",
            shmfetch::worker::MAX_WORKERS
        );
    }
    let pool = WorkerPool::new(a.workers)?;
    let mut ckpt = Checkpoint::open_with(&a.ckpt, opts, pool)?;
    if let Some(c) = a.chunk_size {
        ckpt = ckpt.with_chunk_size(c);
    }
    Ok(ckpt)
}

fn shape(s: &[u64]) -> String {
    let v: Vec<String> = s.iter().map(u64::to_string).collect();
    format!("[{}]", v.join(", "))
}

/// `dcp ls`. Output goes through a locked stdout with `writeln!`, never
/// `println!`: a closed pipe (`| head`) comes back to `main` as an
/// `io::Error` of kind `BrokenPipe` instead of a panic.
fn ls(a: DcpLsArgs) -> Result<()> {
    let ckpt = open(&a.ckpt)?;
    let md = ckpt.metadata()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &md).map_err(std::io::Error::from)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let mut rows = vec![[
        "FQN".to_string(),
        "DTYPE".into(),
        "SHAPE".into(),
        "CHUNKS".into(),
        "FILE".into(),
        "OFFSET".into(),
        "LENGTH".into(),
    ]];
    let mut items: Vec<_> = md.storage.iter().collect();
    items.sort_by(|x, y| (&x.fqn, x.index).cmp(&(&y.fqn, y.index)));
    for it in items {
        let (dtype, shp, chunk) = match md.state_dict.get(&it.fqn) {
            Some(Entry::Tensor(t)) => {
                let c = it.index.and_then(|i| t.chunks.get(i));
                (
                    t.dtype.name().to_string(),
                    shape(&t.size),
                    match c {
                        Some(c) if t.chunks.len() > 1 => format!(
                            "{}/{} at {} size {}",
                            it.index.unwrap_or(0) + 1,
                            t.chunks.len(),
                            shape(&c.offsets),
                            shape(&c.sizes)
                        ),
                        _ => "1".into(),
                    },
                )
            }
            _ => ("bytes".into(), "-".into(), "1".into()),
        };
        rows.push([
            it.fqn.clone(),
            dtype,
            shp,
            chunk,
            it.relative_path.clone(),
            it.offset.to_string(),
            it.length.to_string(),
        ]);
    }
    let mut width = [0usize; 7];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(width)
            .enumerate()
            .map(|(i, (c, w))| {
                if i >= 5 {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    let tensors = md.tensors().count();
    writeln!(
        out,
        "{} FQNs ({tensors} tensors, {} bytes items), {} storage items in {} files, {} bytes",
        md.state_dict.len(),
        md.state_dict.len() - tensors,
        md.storage.len(),
        md.files().len(),
        md.stored_bytes()
    )?;
    out.flush()?;
    Ok(())
}

fn kind_of(a: &DcpExportArgs) -> ReaderKind {
    match a.reader {
        ReaderArg::Sequential => ReaderKind::Sequential,
        ReaderArg::RangeBased => ReaderKind::RangeBased {
            buffer_size: a.buffer_size,
        },
        ReaderArg::DcpOptimized => ReaderKind::DcpOptimized { max_gap: a.max_gap },
    }
}

fn export(a: DcpExportArgs) -> Result<()> {
    // A wrong -o is refused before the pool starts or anything is fetched.
    shmfetch::dcp::export::check_destination(&a.output)?;
    let ckpt = open(&a.ckpt)?;
    let start = Instant::now();
    let md: Metadata = ckpt.metadata()?;
    let kind = kind_of(&a);
    let total: u64 = md
        .tensors()
        .filter(|(f, _)| a.only.is_empty() || a.only.iter().any(|o| o == f))
        .fold(0u64, |n, (_, t)| n.saturating_add(t.nbytes()));
    let bar = if std::io::stderr().is_terminal() {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    // Ctrl-C clears the bar and removes the part file the writer creates.
    crate::interrupt::set_bar(Some(bar.clone()));
    crate::interrupt::watch_part(Some(shmfetch::dcp::export::part_path(&a.output)?));
    let rep = export_safetensors(&ckpt, &md, kind, &a.only, &a.output, &mut |fqn, n| {
        bar.set_message(fqn.to_string());
        bar.inc(n);
    });
    crate::interrupt::watch_part(None);
    crate::interrupt::set_bar(None);
    bar.finish_and_clear();
    let rep = rep?;
    let secs = start.elapsed().as_secs_f64();
    for s in &rep.skipped_bytes_items {
        eprintln!(
            "skipped bytes item {s} (safetensors holds tensors only; `shmfetch dcp get` fetches it)"
        );
    }
    eprintln!(
        "{} tensors, {} bytes to {} in {secs:.3} s ({kind})",
        rep.tensors,
        rep.tensor_bytes,
        a.output.display()
    );
    if a.stats {
        eprintln!(
            "stats: fetched {} bytes in {} requests; checkpoint holds {} bytes ({:.1}% fetched)",
            rep.bytes_fetched,
            rep.requests,
            rep.checkpoint_bytes,
            100.0 * rep.bytes_fetched as f64 / rep.checkpoint_bytes.max(1) as f64
        );
    }
    Ok(())
}

fn get(a: DcpGetArgs) -> Result<()> {
    let ckpt = open(&a.ckpt)?;
    let md = ckpt.metadata()?;
    match md.state_dict.get(&a.fqn) {
        Some(Entry::Bytes) => {}
        Some(Entry::Tensor(_)) => bail!(
            "{} is a tensor; export it with `shmfetch dcp export {} -o OUT.safetensors --only {}`",
            a.fqn,
            a.ckpt.ckpt,
            a.fqn
        ),
        None => bail!(
            "the checkpoint has no FQN {:?}; `shmfetch dcp ls` lists them",
            a.fqn
        ),
    }
    let items = md.items_of(&a.fqn);
    let [item] = items.as_slice() else {
        bail!("{} has {} storage items, expected 1", a.fqn, items.len());
    };
    let storage = StorageReader::new(
        &ckpt,
        ReaderKind::DcpOptimized {
            max_gap: shmfetch::dcp::MaxGap::Bytes(0),
        },
        &[item],
    );
    let mut r = storage.open(&item.relative_path)?;
    r.seek(SeekFrom::Start(item.offset))?;
    let n = usize::try_from(item.length).map_err(|_| {
        shmfetch::Error::checkpoint(item.label(), "item length does not fit in memory")
    })?;
    let mut buf = shmfetch::dcp::checkpoint::zeroed_buffer(n, &item.label())?;
    r.read_exact(&mut buf)
        .map_err(|e| shmfetch::dcp::readers::from_io(&e, "reading the item"))
        .with_context(|| format!("{} in {}", item.label(), item.relative_path))?;
    let mut out = Output::open(&a.output)?;
    if let Err(e) = out.write_all(&buf) {
        out.abandon();
        return Err(e);
    }
    let dest = out.finish()?;
    eprintln!("{} bytes of {} to {dest}", buf.len(), a.fqn);
    Ok(())
}
