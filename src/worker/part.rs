//! A worker's half of an upload: send the part in its claimed ring slot
//! to where the download's [`UploadTarget`] says, retrying like a range.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::source::HttpClient;
use crate::source::SourceSpec;
use crate::source::http::put_bytes;
use crate::source::retry::{Backoff, MISMATCH_ATTEMPTS, RetryConfig};
use crate::worker::protocol::UploadTarget;

/// One part to send: the bytes covering `range` of the object `dest`, to
/// where `target` (and, for a presigned part, `url`) says.
pub(crate) struct Part<'a> {
    pub dest: &'a SourceSpec,
    pub target: &'a UploadTarget,
    pub url: Option<&'a str>,
    pub range: ByteRange,
    pub bytes: &'a [u8],
}

/// Sends `part` and returns what the server called it (its `ETag`; empty
/// for a file) and the attempts made. A retryable failure is retried under
/// `retry`; `sent` hears how much of the part is out; `wait` sleeps each
/// backoff and says whether to go on (the claim still holds).
pub(crate) fn send_part(
    part: &Part<'_>,
    client: &HttpClient,
    retry: &RetryConfig,
    sent: &mut dyn FnMut(usize),
    wait: &mut dyn FnMut(&Backoff<'_>) -> bool,
) -> (Result<String>, u32) {
    let Part {
        dest,
        target,
        url,
        range,
        bytes,
    } = *part;
    let start = Instant::now();
    let mut attempts = 0u32;
    let mut unanswered = 0u32;
    loop {
        attempts += 1;
        let err = match send_once(dest, target, url, client, range, bytes, sent) {
            Ok(etag) => return (Ok(etag), attempts),
            Err(e) => e,
        };
        // A part the server took without naming it: try again a few times.
        let retryable = match &err {
            Error::RangeMismatch { .. } => {
                unanswered += 1;
                unanswered < MISMATCH_ATTEMPTS
            }
            e => e.is_retryable(),
        };
        let give_up =
            !retryable || attempts >= retry.attempts.max(1) || start.elapsed() >= retry.max_elapsed;
        let delay = retry
            .delay(attempts, rand::random::<u64>())
            .min(retry.max_elapsed.saturating_sub(start.elapsed()));
        if give_up
            || !wait(&Backoff {
                range,
                attempt: attempts,
                cause: &err,
                delay,
            })
        {
            let e = Error::RangeFailed {
                object: dest.display_name(),
                range,
                attempts,
                elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                cause: Box::new(err),
            };
            return (Err(e), attempts);
        }
    }
}

fn send_once(
    dest: &SourceSpec,
    target: &UploadTarget,
    url: Option<&str>,
    client: &HttpClient,
    range: ByteRange,
    bytes: &[u8],
    sent: &mut dyn FnMut(usize),
) -> Result<String> {
    let object = dest.display_name();
    match target {
        UploadTarget::File { path } => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening {} to write", path.display()), &e))?;
            // In pieces, so progress (and the test hook) see it move.
            for (i, piece) in bytes.chunks(1 << 20).enumerate() {
                let at = range.start + (i << 20) as u64;
                f.write_all_at(piece, at)
                    .map_err(|e| Error::io(format!("writing {range} of {}", path.display()), &e))?;
                sent((i << 20) + piece.len());
            }
            Ok(String::new())
        }
        UploadTarget::AisPart {
            upload_id,
            part_size,
        } => {
            let part = part_number(range, *part_size)?;
            let etag = crate::source::aistore::AisWriter::new(client.clone(), dest)?
                .put_part(upload_id, part, bytes)?;
            sent(bytes.len());
            Ok(etag)
        }
        UploadTarget::UrlPart => {
            let SourceSpec::S3 {
                bucket,
                key,
                config,
                ..
            } = dest
            else {
                return Err(Error::Pool("an S3 part for another kind of object".into()));
            };
            let url = url.ok_or_else(|| Error::Pool("an S3 part without its URL".into()))?;
            let public = config.object_url(bucket, key);
            let endpoint = config.endpoint_display();
            let classify = |r| crate::source::s3::classify_s3(bucket, &endpoint, &public, r);
            let etag = put_bytes(
                client,
                url,
                &public,
                &[],
                &object,
                range,
                bytes,
                sent,
                &classify,
            )?;
            match etag.filter(|e| !e.trim().is_empty()) {
                Some(e) => Ok(e),
                None => Err(Error::RangeMismatch {
                    object,
                    range,
                    detail: "the server stored the part but sent no ETag for it".into(),
                }),
            }
        }
    }
}

/// The 1-based number of the part covering `range` when every part but
/// the last is `part_size` bytes.
pub(crate) fn part_number(range: ByteRange, part_size: u64) -> Result<u32> {
    if part_size == 0 || !range.start.is_multiple_of(part_size) {
        return Err(Error::Pool(format!(
            "part {range} does not start at a multiple of {part_size}"
        )));
    }
    u32::try_from(range.start / part_size + 1)
        .map_err(|_| Error::Pool(format!("part {range} is past the last part number")))
}
