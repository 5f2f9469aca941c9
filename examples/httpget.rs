//! Time one ranged GET of a 4 MiB object through ObjectSource, repeated.
use std::time::Instant;
fn main() -> shmfetch::Result<()> {
    let client = shmfetch::source::HttpClient::default();
    let mut buf = vec![0u8; 4 << 20];
    for url in [
        "ais://bench/small-1",
        "http://127.0.0.1:51081/v1/objects/bench/small-1",
    ] {
        let spec = shmfetch::SourceSpec::parse(url)?;
        let src = spec.open(&client)?;
        let meta = src.meta()?;
        let t = Instant::now();
        for _ in 0..50 {
            let mut sink = shmfetch::source::sink::SliceSink::new(&mut buf);
            src.read_range(
                shmfetch::ByteRange {
                    start: 0,
                    end: meta.size,
                },
                &mut sink,
                &meta,
            )?;
        }
        println!(
            "{url}: {:.2} ms per 4 MiB GET",
            t.elapsed().as_secs_f64() * 1e3 / 50.0
        );
    }
    Ok(())
}
