//! S3 writes in S3 mode, as AWS documents them (signatures are not
//! verified, as for reads): `PutObject` (`Content-MD5` and
//! `x-amz-checksum-sha256` checked → `BadDigest`; `If-None-Match: *` and
//! `If-Match` → `PreconditionFailed`), `CopyObject`, `DeleteObject` (204,
//! also when missing), and multipart uploads: `CreateMultipartUpload`,
//! `UploadPart` (`ETag` = quoted hex MD5 of the part), `UploadPartCopy`,
//! `CompleteMultipartUpload` (every listed part must exist with its ETag,
//! in ascending order; the result's ETag is the MD5 of the parts' MD5s,
//! `-N`), `AbortMultipartUpload` (204) and `ListMultipartUploads`; and
//! `DeleteObjects` (`POST /<bucket>?delete`, which `object_store`'s
//! `delete` sends).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use base64::Engine;

use super::ais_write::md5_of;
use super::wire::{BodyError, Framing, MAX_BODY};
use super::{
    Body, Conn, FaultKind, Part, Request, ServerConfig, State, Upload, content_etag,
    if_match_allows, iso8601, lock, log, query_get, respond_raw, s3_error, s3_error_code, s3_path,
    store, take_fault, xml_escape,
};

const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
const NO_SUCH_UPLOAD: &str = "The specified upload does not exist. The upload ID may be invalid, \
     or the upload may have been aborted or completed.";
const INVALID_PART: &str = "One or more of the specified parts could not be found. The part may \
     not have been uploaded, or the specified entity tag may not match the part's entity tag.";

/// A read that is not an object read: a request on a bucket rather than
/// an object (`/<bucket>` or `/<bucket>/`; only `ListMultipartUploads`
/// and `DeleteObjects` are served), or `ListParts` (`GET ?uploadId=`,
/// not served: 501 rather than the object's bytes).
pub(super) fn is_not_an_object_read(req: &Request) -> bool {
    is_bucket_request(req) || has_param(&req.query, "uploadId")
}

fn is_bucket_request(req: &Request) -> bool {
    let rest = req.path.trim_start_matches('/');
    !rest.is_empty()
        && rest.trim_end_matches('/').split('/').count() == 1
        && s3_path(&req.path).is_none()
}

/// Whether the query string has `key` (with or without a value).
fn has_param(query: &str, key: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == key)
}

/// A write, or a bucket request, in S3 mode.
pub(super) fn serve(
    conn: &mut Conn,
    req: &Request,
    cfg: &ServerConfig,
    state: &State,
) -> io::Result<bool> {
    let role = "s3";
    if is_bucket_request(req) {
        return bucket_request(conn, req, state);
    }
    let Some((bucket, key)) = s3_path(&req.path) else {
        log(state, role, req, &req.path, 400);
        let msg = "only path-style requests on /<bucket>/<key> are served";
        return s3_error(conn, req, 400, "InvalidRequest", msg, &req.path, &[]);
    };
    let err = |conn: &mut Conn, status: u16, code: &str, msg: &str| {
        log(state, role, req, &key, status);
        s3_error(conn, req, status, code, msg, &req.path, &[])
    };
    if matches!(req.method.as_str(), "GET" | "HEAD") {
        return err(conn, 501, "NotImplemented", "ListParts is not served");
    }
    let fault = take_fault(state, req, &key, None);
    match fault {
        Some(FaultKind::Outage(d)) => {
            log(state, role, req, &key, 0);
            state.go_down(d);
            return Ok(false);
        }
        Some(FaultKind::ResetDuringBody(n)) => {
            let n = match req.framing {
                Framing::Length(l) => n.min(l - 1),
                _ => n,
            };
            let _ = conn.read_body(req, MAX_BODY, Some(n));
            log(state, role, req, &key, 0);
            conn.reset();
            return Ok(false);
        }
        _ => {}
    }
    let body = match conn.read_body(req, MAX_BODY, None) {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            let msg = "Your proposed upload exceeds the maximum allowed size";
            return err(conn, 400, "EntityTooLarge", msg);
        }
        Err(BodyError::Malformed(why)) => return err(conn, 400, "InvalidRequest", why),
        Err(BodyError::Io) => {
            log(state, role, req, &key, 0);
            return Ok(false);
        }
    };
    match fault {
        Some(FaultKind::Status(s)) => {
            let (code, msg) = s3_error_code(s);
            return err(conn, s, code, msg);
        }
        Some(FaultKind::S3Error(s, code)) => return err(conn, s, code, "injected"),
        Some(FaultKind::Stall(d)) => {
            log(state, role, req, &key, 0);
            std::thread::sleep(d);
            return Ok(false);
        }
        _ => {}
    }
    let bucket_exists = state
        .buckets
        .read()
        .map(|b| b.contains_key(&bucket))
        .unwrap_or(false);
    if !bucket_exists {
        return err(
            conn,
            404,
            "NoSuchBucket",
            "The specified bucket does not exist.",
        );
    }
    if let Err((code, msg)) = check_digests(req, &body) {
        return err(conn, 400, code, msg);
    }
    let upload_id = query_get(&req.query, "uploadId");
    let copy_source = req.header("x-amz-copy-source");
    let w = Write {
        req,
        state,
        cfg,
        bucket: &bucket,
        key: &key,
    };
    let r = match (req.method.as_str(), upload_id, copy_source) {
        ("PUT", Some(id), src) => w.upload_part(&id, body, src),
        ("PUT", None, Some(src)) => w.copy_object(src),
        ("PUT", None, None) => w.put_object(body),
        ("POST", None, _) if has_param(&req.query, "uploads") => w.create_upload(),
        ("POST", Some(id), _) => w.complete(&id, &body),
        ("DELETE", Some(id), _) => w.abort(&id),
        ("DELETE", None, _) => w.delete_object(),
        _ => Err((
            405,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.".into(),
        )),
    };
    match r {
        Ok(a) => {
            log(state, role, req, &key, a.status);
            let headers: Vec<(&str, String)> =
                a.headers.iter().map(|(k, v)| (*k, v.clone())).collect();
            respond_raw(
                conn,
                req,
                a.status,
                &headers,
                "application/xml",
                a.xml.as_bytes(),
            )
        }
        Err((status, code, msg)) => err(conn, status, code, &msg),
    }
}

/// A successful answer.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    xml: String,
}

impl Answer {
    fn empty(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            xml: String::new(),
        }
    }

    fn xml(root: &str, inner: &str) -> Answer {
        Answer {
            status: 200,
            headers: Vec::new(),
            xml: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{root} xmlns=\"{XMLNS}\">{inner}</{root}>"
            ),
        }
    }
}

/// An S3 error: status, code, message.
type S3Fail = (u16, &'static str, String);

/// `Content-MD5` (base64 of the body's MD5) and `x-amz-checksum-sha256`
/// (base64 of its SHA-256), when sent, must match the body.
fn check_digests(req: &Request, body: &[u8]) -> Result<(), (&'static str, &'static str)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(v) = req.header("content-md5") {
        let Ok(want) = b64.decode(v.trim()) else {
            return Err((
                "InvalidDigest",
                "The Content-MD5 you specified is not valid.",
            ));
        };
        if want.len() != 16 {
            return Err((
                "InvalidDigest",
                "The Content-MD5 you specified is not valid.",
            ));
        }
        if want != md5_of(body) {
            let msg = "The Content-MD5 you specified did not match what we received.";
            return Err(("BadDigest", msg));
        }
    }
    if let Some(v) = req.header("x-amz-checksum-sha256") {
        use sha2::Digest;
        let got = sha2::Sha256::digest(body);
        if b64.decode(v.trim()).ok().as_deref() != Some(&got[..]) {
            let msg = "The SHA256 you specified did not match the calculated checksum.";
            return Err(("BadDigest", msg));
        }
    }
    Ok(())
}

/// One write to `bucket`/`key`.
struct Write<'a> {
    req: &'a Request,
    state: &'a State,
    cfg: &'a ServerConfig,
    bucket: &'a str,
    key: &'a str,
}

impl Write<'_> {
    /// The stored object's ETag, if there is one.
    fn current_etag(&self) -> Option<String> {
        let b = self.state.buckets.read().ok()?;
        let s = b.get(self.bucket)?.get(self.key)?;
        Some(s.etag.clone().unwrap_or_else(|| content_etag(&s.body)))
    }

    /// Conditional writes: `If-None-Match: *` (only when absent) and
    /// `If-Match` (only over that ETag).
    fn preconditions(&self) -> Result<(), S3Fail> {
        let failed = || {
            (
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold".to_string(),
            )
        };
        let current = self.current_etag();
        if self.req.header("if-none-match").map(str::trim) == Some("*") && current.is_some() {
            return Err(failed());
        }
        if let Some(im) = &self.req.if_match {
            match &current {
                None => {
                    return Err((404, "NoSuchKey", "The specified key does not exist.".into()));
                }
                Some(etag) if !if_match_allows(im, etag) => return Err(failed()),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn put_object(&self, body: Vec<u8>) -> Result<Answer, S3Fail> {
        self.preconditions()?;
        let etag = format!("\"{}\"", hex::encode(md5_of(&body)));
        let body = Body::Bytes(Arc::new(body));
        store(self.state, self.bucket, self.key, body, Some(etag.clone()));
        let mut a = Answer::empty(200);
        a.headers.push(("ETag", etag));
        self.echo_checksum(&mut a);
        Ok(a)
    }

    /// Echoes the request's `x-amz-checksum-sha256` (checked) as S3 does.
    fn echo_checksum(&self, a: &mut Answer) {
        if let Some(v) = self.req.header("x-amz-checksum-sha256") {
            a.headers.push(("x-amz-checksum-sha256", v.to_string()));
        }
    }

    /// The bytes named by an `x-amz-copy-source` (`[/]bucket/key`,
    /// percent-encoded, optionally `?versionId=`), and their ETag.
    fn copy_source(&self, src: &str) -> Result<(Arc<Vec<u8>>, String), S3Fail> {
        let src = src.split_once('?').map_or(src, |(p, _)| p);
        let decoded = percent_encoding::percent_decode_str(src.trim_start_matches('/'))
            .decode_utf8()
            .map_err(|_| invalid_argument("Invalid copy source encoding"))?;
        let Some((b, k)) = decoded
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        else {
            return Err(invalid_argument("Invalid copy source object key"));
        };
        let stored = {
            let buckets = self.state.buckets.read().ok();
            let Some(objs) = buckets.as_ref().and_then(|x| x.get(b)) else {
                return Err((
                    404,
                    "NoSuchBucket",
                    "The specified bucket does not exist.".into(),
                ));
            };
            objs.get(k).cloned()
        };
        let Some(stored) = stored else {
            return Err((404, "NoSuchKey", "The specified key does not exist.".into()));
        };
        let etag = stored
            .etag
            .clone()
            .unwrap_or_else(|| content_etag(&stored.body));
        let data = match stored.body {
            Body::Bytes(b) => b,
            Body::File(p) => Arc::new(std::fs::read(p).map_err(|e| {
                (
                    500,
                    "InternalError",
                    format!("reading the copy source: {e}"),
                )
            })?),
        };
        Ok((data, etag))
    }

    fn copy_object(&self, src: &str) -> Result<Answer, S3Fail> {
        let (data, _) = self.copy_source(src)?;
        self.preconditions()?;
        // A copy is stored as one PUT would store it.
        let etag = format!("\"{}\"", hex::encode(md5_of(&data)));
        store(
            self.state,
            self.bucket,
            self.key,
            Body::Bytes(data),
            Some(etag.clone()),
        );
        let inner = format!(
            "<LastModified>{}</LastModified><ETag>{}</ETag>",
            iso8601(SystemTime::now()),
            xml_escape(&etag)
        );
        Ok(Answer::xml("CopyObjectResult", &inner))
    }

    fn delete_object(&self) -> Result<Answer, S3Fail> {
        if let Ok(mut b) = self.state.buckets.write()
            && let Some(objs) = b.get_mut(self.bucket)
        {
            objs.remove(self.key);
        }
        Ok(Answer::empty(204))
    }

    fn create_upload(&self) -> Result<Answer, S3Fail> {
        let n = self.state.upload_ids.fetch_add(1, Ordering::Relaxed);
        let id = format!("{n:x}.{:016x}", rand::random::<u64>());
        lock(&self.state.uploads).insert(
            id.clone(),
            Upload {
                bucket: self.bucket.to_string(),
                object: self.key.to_string(),
                initiated: SystemTime::now(),
                parts: Default::default(),
            },
        );
        let inner = format!(
            "<Bucket>{}</Bucket><Key>{}</Key><UploadId>{}</UploadId>",
            xml_escape(self.bucket),
            xml_escape(self.key),
            xml_escape(&id)
        );
        Ok(Answer::xml("InitiateMultipartUploadResult", &inner))
    }

    /// Runs `f` on this key's upload `id`, or `NoSuchUpload`.
    fn with_upload<T>(&self, id: &str, f: impl FnOnce(&mut Upload) -> T) -> Result<T, S3Fail> {
        let mut ups = lock(&self.state.uploads);
        match ups
            .get_mut(id)
            .filter(|u| u.bucket == self.bucket && u.object == self.key)
        {
            Some(u) => Ok(f(u)),
            None => Err((404, "NoSuchUpload", NO_SUCH_UPLOAD.into())),
        }
    }

    fn upload_part(&self, id: &str, body: Vec<u8>, copy: Option<&str>) -> Result<Answer, S3Fail> {
        let n = query_get(&self.req.query, "partNumber")
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                invalid_argument("Part number must be an integer between 1 and 10000, inclusive")
            })?;
        self.with_upload(id, |_| ())?;
        let data = match copy {
            None => body,
            Some(src) => {
                let (data, _) = self.copy_source(src)?;
                match self.req.header("x-amz-copy-source-range") {
                    None => data.as_ref().clone(),
                    Some(r) => {
                        let r = crate::range::parse_range_header(r, data.len() as u64).map_err(
                            |_| invalid_argument("The x-amz-copy-source-range value is not valid"),
                        )?;
                        data[r.start as usize..r.end as usize].to_vec()
                    }
                }
            }
        };
        let md5 = md5_of(&data);
        self.with_upload(id, |u| u.parts.insert(n, Part { data, md5 }))?;
        let etag = format!("\"{}\"", hex::encode(md5));
        if copy.is_some() {
            let inner = format!(
                "<LastModified>{}</LastModified><ETag>{}</ETag>",
                iso8601(SystemTime::now()),
                xml_escape(&etag)
            );
            return Ok(Answer::xml("CopyPartResult", &inner));
        }
        let mut a = Answer::empty(200);
        a.headers.push(("ETag", etag));
        self.echo_checksum(&mut a);
        Ok(a)
    }

    fn complete(&self, id: &str, body: &[u8]) -> Result<Answer, S3Fail> {
        let malformed = || {
            (
                400,
                "MalformedXML",
                "The XML you provided was not well-formed or did not validate against our \
                 published schema."
                    .to_string(),
            )
        };
        let listed = parse_complete(body).ok_or_else(malformed)?;
        if listed.is_empty() {
            return Err(malformed());
        }
        self.with_upload(id, |_| ())?;
        if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err((
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. The parts list must be specified \
                 in order by part number."
                    .into(),
            ));
        }
        self.preconditions()?;
        let mut ups = lock(&self.state.uploads);
        let Some(up) = ups
            .get(id)
            .filter(|u| u.bucket == self.bucket && u.object == self.key)
        else {
            return Err((404, "NoSuchUpload", NO_SUCH_UPLOAD.into()));
        };
        for (i, (n, etag)) in listed.iter().enumerate() {
            let Some(p) = up.parts.get(n) else {
                return Err((400, "InvalidPart", INVALID_PART.into()));
            };
            let want = etag.trim().trim_matches('"');
            if !want.eq_ignore_ascii_case(&hex::encode(p.md5)) {
                return Err((400, "InvalidPart", INVALID_PART.into()));
            }
            if i + 1 < listed.len() && (p.data.len() as u64) < self.cfg.min_part_size {
                return Err((
                    400,
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.".into(),
                ));
            }
        }
        let Some(mut up) = ups.remove(id) else {
            return Err((404, "NoSuchUpload", NO_SUCH_UPLOAD.into()));
        };
        drop(ups);
        // Parts not listed are dropped, as S3 does.
        let mut data = Vec::new();
        let mut md5s = Vec::with_capacity(listed.len() * 16);
        for (n, _) in &listed {
            if let Some(p) = up.parts.remove(n) {
                data.extend_from_slice(&p.data);
                md5s.extend_from_slice(&p.md5);
            }
        }
        let etag = format!("\"{}-{}\"", hex::encode(md5_of(&md5s)), listed.len());
        store(
            self.state,
            self.bucket,
            self.key,
            Body::Bytes(Arc::new(data)),
            Some(etag.clone()),
        );
        let inner = format!(
            "<Location>/{}/{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag>",
            xml_escape(self.bucket),
            xml_escape(self.key),
            xml_escape(self.bucket),
            xml_escape(self.key),
            xml_escape(&etag)
        );
        Ok(Answer::xml("CompleteMultipartUploadResult", &inner))
    }

    fn abort(&self, id: &str) -> Result<Answer, S3Fail> {
        self.with_upload(id, |_| ())?;
        lock(&self.state.uploads).remove(id);
        Ok(Answer::empty(204))
    }
}

fn invalid_argument(msg: &str) -> S3Fail {
    (400, "InvalidArgument", msg.to_string())
}

/// A request on a bucket: `GET /<bucket>?uploads[&prefix=…]`,
/// `ListMultipartUploads` (all of them, sorted by key and upload id,
/// never truncated), or `POST /<bucket>?delete`, `DeleteObjects`.
fn bucket_request(conn: &mut Conn, req: &Request, state: &State) -> io::Result<bool> {
    let bucket = percent_encoding::percent_decode_str(req.path.trim_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    let err = |conn: &mut Conn, status: u16, code: &str, msg: &str| {
        log(state, "s3", req, &req.path, status);
        s3_error(conn, req, status, code, msg, &req.path, &[])
    };
    let list = req.method == "GET" && has_param(&req.query, "uploads");
    let delete = req.method == "POST" && has_param(&req.query, "delete");
    if !list && !delete {
        let msg = "only ListMultipartUploads (GET /<bucket>?uploads) and DeleteObjects \
                   (POST /<bucket>?delete) are served on a bucket";
        return err(conn, 501, "NotImplemented", msg);
    }
    let exists = state
        .buckets
        .read()
        .map(|b| b.contains_key(&bucket))
        .unwrap_or(false);
    if !exists {
        return err(
            conn,
            404,
            "NoSuchBucket",
            "The specified bucket does not exist.",
        );
    }
    if delete {
        return delete_objects(conn, req, state, &bucket);
    }
    let prefix = query_get(&req.query, "prefix").unwrap_or_default();
    let mut ups: Vec<(String, String, SystemTime)> = lock(&state.uploads)
        .iter()
        .filter(|(_, u)| u.bucket == bucket && u.object.starts_with(&prefix))
        .map(|(id, u)| (u.object.clone(), id.clone(), u.initiated))
        .collect();
    ups.sort();
    let mut inner = format!(
        "<Bucket>{}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>\
         <Prefix>{}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>",
        xml_escape(&bucket),
        xml_escape(&prefix)
    );
    for (key, id, at) in ups {
        inner.push_str(&format!(
            "<Upload><Key>{}</Key><UploadId>{}</UploadId><Initiated>{}</Initiated>\
             <StorageClass>STANDARD</StorageClass></Upload>",
            xml_escape(&key),
            xml_escape(&id),
            iso8601(at)
        ));
    }
    log(state, "s3", req, &req.path, 200);
    let a = Answer::xml("ListMultipartUploadsResult", &inner);
    respond_raw(conn, req, 200, &[], "application/xml", a.xml.as_bytes())
}

/// `DeleteObjects`: the keys of a `<Delete>` body are removed (a missing
/// one counts as deleted, as in S3); `Content-MD5` or a checksum is
/// checked when sent. With `<Quiet>true</Quiet>` the answer lists only
/// errors (there are none).
fn delete_objects(conn: &mut Conn, req: &Request, state: &State, bucket: &str) -> io::Result<bool> {
    let err = |conn: &mut Conn, status: u16, code: &str, msg: &str| {
        log(state, "s3", req, &req.path, status);
        s3_error(conn, req, status, code, msg, &req.path, &[])
    };
    let malformed = "The XML you provided was not well-formed or did not validate against our \
                     published schema.";
    let body = match conn.read_body(req, 1 << 20, None) {
        Ok(b) => b,
        Err(BodyError::Io) => {
            log(state, "s3", req, &req.path, 0);
            return Ok(false);
        }
        Err(_) => return err(conn, 400, "MalformedXML", malformed),
    };
    if let Err((code, msg)) = check_digests(req, &body) {
        return err(conn, 400, code, msg);
    }
    let Some((keys, quiet)) = parse_delete(&body) else {
        return err(conn, 400, "MalformedXML", malformed);
    };
    let mut inner = String::new();
    if let Ok(mut b) = state.buckets.write()
        && let Some(objs) = b.get_mut(bucket)
    {
        for k in &keys {
            objs.remove(k);
            if !quiet {
                inner.push_str(&format!("<Deleted><Key>{}</Key></Deleted>", xml_escape(k)));
            }
        }
    }
    log(state, "s3", req, &req.path, 200);
    let a = Answer::xml("DeleteResult", &inner);
    respond_raw(conn, req, 200, &[], "application/xml", a.xml.as_bytes())
}

/// The keys of a `DeleteObjects` body and its `Quiet` flag; `None` when
/// malformed.
fn parse_delete(body: &[u8]) -> Option<(Vec<String>, bool)> {
    use quick_xml::events::Event;
    let text = std::str::from_utf8(body).ok()?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let (mut keys, mut quiet) = (Vec::new(), String::new());
    let mut key: Option<String> = None;
    let mut saw_root = false;
    loop {
        let mut push = |stack: &Vec<Vec<u8>>, s: &str| match stack.as_slice() {
            [_, o, k] if o == b"Object" && k == b"Key" => {
                key.get_or_insert_with(String::new).push_str(s)
            }
            [_, q] if q == b"Quiet" => quiet.push_str(s),
            _ => {}
        };
        match reader.read_event().ok()? {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_vec();
                if stack.is_empty() {
                    if name != b"Delete" {
                        return None;
                    }
                    saw_root = true;
                }
                stack.push(name);
            }
            Event::End(_) => {
                let name = stack.pop()?;
                if stack.len() == 1 && name == b"Object" {
                    keys.push(key.take()?);
                }
            }
            Event::Text(t) => push(&stack, &t.decode().ok()?),
            Event::GeneralRef(r) => {
                let s = match r.resolve_char_ref().ok()? {
                    Some(c) => c.to_string(),
                    None => {
                        quick_xml::escape::resolve_predefined_entity(&r.decode().ok()?)?.to_string()
                    }
                };
                push(&stack, &s);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (saw_root && stack.is_empty()).then(|| (keys, quiet.trim() == "true"))
}

/// The `(PartNumber, ETag)` of each `Part` of a
/// `CompleteMultipartUpload` body, in the order given; `None` when the
/// XML is malformed or a part lacks either.
fn parse_complete(body: &[u8]) -> Option<Vec<(u32, String)>> {
    use quick_xml::events::Event;
    let text = std::str::from_utf8(body).ok()?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut parts = Vec::new();
    let (mut number, mut etag) = (None::<String>, None::<String>);
    let mut saw_root = false;
    loop {
        let field = |stack: &Vec<Vec<u8>>| -> Option<bool> {
            // Some(true): PartNumber, Some(false): ETag, inside a Part.
            match stack.as_slice() {
                [_, p, f] if p == b"Part" && f == b"PartNumber" => Some(true),
                [_, p, f] if p == b"Part" && f == b"ETag" => Some(false),
                _ => None,
            }
        };
        let push = |stack: &Vec<Vec<u8>>,
                    number: &mut Option<String>,
                    etag: &mut Option<String>,
                    s: &str| {
            match field(stack) {
                Some(true) => number.get_or_insert_with(String::new).push_str(s),
                Some(false) => etag.get_or_insert_with(String::new).push_str(s),
                None => {}
            }
        };
        match reader.read_event().ok()? {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_vec();
                if stack.is_empty() {
                    if name != b"CompleteMultipartUpload" {
                        return None;
                    }
                    saw_root = true;
                }
                if stack.len() == 1 && name == b"Part" {
                    number = None;
                    etag = None;
                }
                stack.push(name);
            }
            Event::Empty(e)
                if stack.is_empty() && e.local_name().as_ref() == b"CompleteMultipartUpload" =>
            {
                saw_root = true;
            }
            Event::End(_) => {
                let name = stack.pop()?;
                if stack.len() == 1 && name == b"Part" {
                    let n = number.take()?.trim().parse::<u32>().ok()?;
                    parts.push((n, etag.take()?.trim().to_string()));
                }
            }
            Event::Text(t) => push(&stack, &mut number, &mut etag, &t.decode().ok()?),
            Event::GeneralRef(r) => {
                let s = match r.resolve_char_ref().ok()? {
                    Some(c) => c.to_string(),
                    None => {
                        quick_xml::escape::resolve_predefined_entity(&r.decode().ok()?)?.to_string()
                    }
                };
                push(&stack, &mut number, &mut etag, &s);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (saw_root && stack.is_empty()).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_bodies_parse_with_their_quiet_flag() {
        let b = br#"<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>a &amp; b</Key></Object><Object><Key>c</Key><VersionId>1</VersionId></Object><Quiet>true</Quiet></Delete>"#;
        assert_eq!(
            parse_delete(b),
            Some((vec!["a & b".to_string(), "c".to_string()], true))
        );
        assert_eq!(
            parse_delete(b"<Delete><Object><Key>k</Key></Object></Delete>"),
            Some((vec!["k".to_string()], false))
        );
        assert_eq!(parse_delete(b"<Delete><Object></Object></Delete>"), None);
        assert_eq!(parse_delete(b"<Other/>"), None);
    }

    #[test]
    fn complete_bodies_parse_as_sdks_write_them() {
        // object_store (quick-xml), boto3 (escaped quotes, namespace).
        let a = br#"<CompleteMultipartUpload><Part><ETag>"ab"</ETag><PartNumber>1</PartNumber></Part><Part><ETag>"cd"</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#;
        assert_eq!(
            parse_complete(a),
            Some(vec![(1, "\"ab\"".into()), (2, "\"cd\"".into())])
        );
        let b = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>&quot;ab&quot;</ETag><PartNumber>3</PartNumber></Part></CompleteMultipartUpload>"#;
        assert_eq!(parse_complete(b), Some(vec![(3, "\"ab\"".into())]));
        assert_eq!(parse_complete(b"<CompleteMultipartUpload/>"), Some(vec![]));
        for bad in [
            &b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>"[..],
            b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>e</ETag></Part></CompleteMultipartUpload>",
            b"<Other/>",
            b"<CompleteMultipartUpload><Part>",
            b"",
        ] {
            assert_eq!(parse_complete(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
