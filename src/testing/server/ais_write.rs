//! AIStore writes: the gateway's 307 for `PUT`, `DELETE` and `POST` on an
//! object, and what a target does with them.
//!
//! Modelled on AIStore's `ais/proxy.go` (`httpobjput`, `httpobjdelete`,
//! `httpobjpost`), `ais/target.go` (the same verbs) and `ais/tgtmpt.go`
//! (multipart uploads: `putPart`, `complete` with `_checkParts`, `abort`).
//! Messages follow theirs where a client may look at them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::wire::{BodyError, Framing, MAX_BODY};
use super::{
    Body, Conn, FaultKind, Part, Request, ServerConfig, State, Upload, ais_error, gateway_checks,
    lock, log, object_path, query_get, redirect, respond, respond_raw, store, take_fault,
};

/// Largest action message a gateway or target reads.
const MAX_ACTION: u64 = 1 << 20;

/// What the proxy of an AIStore older than multipart uploads (≤ 3.31)
/// answers to any object action it does not route by object name: it
/// parsed `/v1/objects/b/o` with one item after the prefix, so the bucket
/// name was `b/o` (`cmn/cos/uuid.go` `CheckAlphaPlus`, `OnlyPlus`).
const OLD_PROXY_BUCKET_NAME: &str = "bucket name is invalid: may only contain letters, numbers, \
     dashes (-), underscores (_), and dots (.)";

/// An action message (`api/apc/actmsg.go` `ActMsg`).
#[derive(Debug, Default, serde::Deserialize)]
struct ActMsg {
    #[serde(default)]
    action: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: serde_json::Value,
}

/// One entry of `mpt-complete`'s value (`api/apc/mpt.go`).
#[derive(Debug, serde::Deserialize)]
struct CompletedPart {
    #[serde(rename = "part-number")]
    part_number: i64,
}

/// `PUT`, `DELETE`, `POST` at the gateway: checks, then a 307 to the
/// target its `GET` redirect would name. A `POST`'s action message is read
/// (AIStore's proxy decides by it); other bodies are left unread.
pub(super) fn gateway(
    conn: &mut Conn,
    req: &Request,
    cfg: &ServerConfig,
    state: &State,
    targets: &[SocketAddr],
) -> io::Result<bool> {
    let json_error = |conn: &mut Conn, status: u16, msg: &str| {
        log(state, "gateway", req, &req.path, status);
        respond(
            conn,
            req,
            status,
            &[],
            &ais_error(status, "", msg, &req.method, &req.path),
        )
    };
    let msg = match req.method.as_str() {
        "PUT" | "DELETE" => None,
        "POST" => {
            let body = match conn.read_body(req, MAX_ACTION, None) {
                Ok(b) => b,
                Err(e) => return body_error(conn, req, state, "gateway", &req.path, e),
            };
            let Ok(msg) = serde_json::from_slice::<ActMsg>(&body) else {
                return json_error(conn, 400, "failed to read the action message (JSON)");
            };
            if cfg.no_multipart && !matches!(msg.action.as_str(), "rename-obj" | "check-lock") {
                return json_error(conn, 400, OLD_PROXY_BUCKET_NAME);
            }
            if !matches!(
                msg.action.as_str(),
                "rename-obj" | "mpt-upload" | "mpt-complete" | "mpt-abort"
            ) {
                return json_error(conn, 400, &format!("invalid action {:?}", msg.action));
            }
            Some(msg)
        }
        _ => {
            log(state, "gateway", req, &req.path, 405);
            let allow = [("Allow", "DELETE, GET, HEAD, POST, PUT".to_string())];
            let body = ais_error(405, "", "method not allowed", &req.method, &req.path);
            return respond(conn, req, 405, &allow, &body);
        }
    };
    let (bucket, object) = match gateway_checks(conn, req, cfg, state)? {
        Ok(bo) => bo,
        Err(keep) => return Ok(keep),
    };
    if let Some(msg) = msg
        && msg.action == "rename-obj"
    {
        // `_checkObjMv`: not for remote buckets (501), nor onto itself.
        let provider = query_get(&req.query, "provider").unwrap_or_else(|| "ais".into());
        if provider != "ais" {
            log(state, "gateway", req, &object, 501);
            let m = format!(
                "invalid action \"rename-obj\": not supported for remote buckets ({provider}://{bucket})"
            );
            let body = ais_error(501, "ErrUnsupp", &m, &req.method, &req.path);
            return respond(conn, req, 501, &[], &body);
        }
        if msg.name.is_empty() {
            return json_error(conn, 400, "object name is empty");
        }
        if msg.name == object {
            let m = format!("cannot rename ais://{bucket}/{object} to self, nothing to do");
            return json_error(conn, 400, &m);
        }
    }
    redirect(conn, req, cfg, state, targets, &object, 307)
}

/// A write at a target: markers checked (with a token configured), faults
/// applied, body read, then `PUT` (object or part), `DELETE` (object, or
/// `mpt-abort`) or `POST` (`rename-obj`, `mpt-upload`, `mpt-complete`).
pub(super) fn target(
    conn: &mut Conn,
    req: &Request,
    idx: usize,
    cfg: &ServerConfig,
    state: &State,
) -> io::Result<bool> {
    let role = format!("target{idx}");
    let Some((bucket, object)) = object_path(&req.path) else {
        log(state, &role, req, &req.path, 400);
        let body = ais_error(400, "", "invalid URL path", &req.method, &req.path);
        return respond(conn, req, 400, &[], &body);
    };
    let err = |conn: &mut Conn, status: u16, tcode: &str, msg: &str| {
        log(state, &role, req, &object, status);
        let body = ais_error(status, tcode, msg, &req.method, &req.path);
        respond(conn, req, status, &[], &body)
    };
    // The target trusts the gateway's markers and checks no token; with
    // AuthN on, a request without them is refused (`_verifyUnsigned`).
    if cfg.token.is_some()
        && (query_get(&req.query, "pid").is_none() || query_get(&req.query, "utm").is_none())
    {
        return err(conn, 403, "", "direct target access denied");
    }
    let bucket_exists = state
        .buckets
        .read()
        .map(|b| b.contains_key(&bucket))
        .unwrap_or(false);
    if !bucket_exists {
        let m = format!("bucket \"ais://{bucket}\" does not exist");
        return err(conn, 404, "ErrBckNotFound", &m);
    }
    let fault = take_fault(state, req, &object, None);
    match fault {
        Some(FaultKind::Outage(d)) => {
            log(state, &role, req, &object, 0);
            state.go_down(d);
            return Ok(false);
        }
        Some(FaultKind::ResetDuringBody(n)) => {
            let n = match req.framing {
                Framing::Length(l) => n.min(l - 1),
                _ => n,
            };
            let _ = conn.read_body(req, MAX_BODY, Some(n));
            log(state, &role, req, &object, 0);
            conn.reset();
            return Ok(false);
        }
        _ => {}
    }
    let body = match conn.read_body(req, MAX_BODY, None) {
        Ok(b) => b,
        Err(e) => return body_error(conn, req, state, &role, &object, e),
    };
    match fault {
        Some(FaultKind::Status(s) | FaultKind::S3Error(s, _)) => {
            return err(conn, s, "", &format!("injected {s}"));
        }
        Some(FaultKind::Stall(d)) => {
            log(state, &role, req, &object, 0);
            std::thread::sleep(d);
            return Ok(false);
        }
        _ => {}
    }
    let cname = format!("ais://{bucket}/{object}");
    let upload_id = query_get(&req.query, "uploadId").filter(|s| !s.is_empty());
    match req.method.as_str() {
        "PUT" => match upload_id {
            Some(id) => {
                let part = query_get(&req.query, "partNumber").unwrap_or_default();
                let Ok(n) = part.parse::<i64>() else {
                    let m = format!("{cname}: invalid part number {part:?} for uploadID {id:?}");
                    return err(conn, 400, "", &m);
                };
                let n = match u32::try_from(n) {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        let m = format!("part number must be a positive integer, got: {n}");
                        return err(conn, 400, "", &m);
                    }
                };
                // `_put`: the part's size is its Content-Length, > 0.
                let size = match req.framing {
                    Framing::Length(l) => l as i64,
                    Framing::Chunked => -1,
                    Framing::None => 0,
                };
                if size <= 0 {
                    return err(
                        conn,
                        400,
                        "",
                        &format!("{cname}: put-part invalid size ({size})"),
                    );
                }
                let md5 = md5_of(&body);
                {
                    let mut ups = lock(&state.uploads);
                    let Some(up) = ups
                        .get_mut(&id)
                        .filter(|u| u.bucket == bucket && u.object == object)
                    else {
                        drop(ups);
                        let m = format!("{cname}: upload {id:?} does not exist");
                        return err(conn, 404, "ErrNotFound", &m);
                    };
                    up.parts.insert(n, Part { data: body, md5 });
                }
                log(state, &role, req, &object, 200);
                let etag = format!("\"{}\"", hex::encode(md5));
                respond(conn, req, 200, &[("ETag", etag)], "")
            }
            None => {
                store(state, &bucket, &object, Body::Bytes(Arc::new(body)), None);
                log(state, &role, req, &object, 200);
                respond(conn, req, 200, &[], "")
            }
        },
        "DELETE" => {
            let msg = if body.is_empty() {
                ActMsg::default()
            } else {
                match serde_json::from_slice::<ActMsg>(&body) {
                    Ok(m) => m,
                    Err(_) => return err(conn, 400, "", "failed to read the action message"),
                }
            };
            match msg.action.as_str() {
                "mpt-abort" => {
                    let Some(id) = upload_id else {
                        return err(conn, 400, "", "invalid manifest ID: empty upload ID");
                    };
                    let gone = {
                        let mut ups = lock(&state.uploads);
                        let mine = ups
                            .get(&id)
                            .is_some_and(|u| u.bucket == bucket && u.object == object);
                        mine && ups.remove(&id).is_some()
                    };
                    if !gone {
                        let m = format!("{cname}: upload {id:?} does not exist");
                        return err(conn, 404, "ErrNotFound", &m);
                    }
                    log(state, &role, req, &object, 200);
                    respond(conn, req, 200, &[], "")
                }
                "" => {
                    let removed = state
                        .buckets
                        .write()
                        .ok()
                        .and_then(|mut b| b.get_mut(&bucket)?.remove(&object))
                        .is_some();
                    if !removed {
                        return err(conn, 404, "", &format!("{cname} doesn't exist"));
                    }
                    log(state, &role, req, &object, 200);
                    respond(conn, req, 200, &[], "")
                }
                a => err(conn, 400, "", &format!("invalid action {a:?}")),
            }
        }
        "POST" => {
            let Ok(msg) = serde_json::from_slice::<ActMsg>(&body) else {
                return err(conn, 400, "", "failed to read the action message (JSON)");
            };
            match msg.action.as_str() {
                "rename-obj" => rename(conn, req, state, &role, &bucket, &object, &msg.name),
                "mpt-upload" => {
                    let n = state.upload_ids.fetch_add(1, Ordering::Relaxed);
                    let id = format!("{n:x}{:012x}", rand::random::<u64>() >> 16);
                    lock(&state.uploads).insert(
                        id.clone(),
                        Upload {
                            bucket: bucket.clone(),
                            object: object.clone(),
                            initiated: SystemTime::now(),
                            parts: Default::default(),
                        },
                    );
                    log(state, &role, req, &object, 200);
                    respond_raw(conn, req, 200, &[], "text/plain", id.as_bytes())
                }
                "mpt-complete" => {
                    let Some(id) = upload_id else {
                        return err(conn, 400, "", "missing uploadId");
                    };
                    let listed =
                        match serde_json::from_value::<Option<Vec<CompletedPart>>>(msg.value) {
                            Ok(Some(l)) => l,
                            Ok(None) => return err(conn, 400, "", "nil parts list"),
                            Err(e) => {
                                return err(conn, 400, "", &format!("invalid parts list: {e}"));
                            }
                        };
                    match complete(state, &bucket, &object, &id, listed) {
                        Ok(()) => {
                            log(state, &role, req, &object, 200);
                            respond(conn, req, 200, &[], "")
                        }
                        Err((status, tcode, m)) => {
                            err(conn, status, tcode, &format!("{cname}: {m}"))
                        }
                    }
                }
                a => err(conn, 400, "", &format!("invalid action {a:?}")),
            }
        }
        _ => err(conn, 405, "", "method not allowed"),
    }
}

/// `rename-obj` at the target: the object is copied to `to` (replacing
/// what is there) and removed (`objMv`).
fn rename(
    conn: &mut Conn,
    req: &Request,
    state: &State,
    role: &str,
    bucket: &str,
    object: &str,
    to: &str,
) -> io::Result<bool> {
    let err = |conn: &mut Conn, status: u16, tcode: &str, msg: &str| {
        log(state, role, req, object, status);
        let body = ais_error(status, tcode, msg, &req.method, &req.path);
        respond(conn, req, status, &[], &body)
    };
    if to.is_empty() {
        return err(conn, 400, "", "object name is empty");
    }
    if to == object {
        let m = format!("{role}: cannot rename/move object ais://{bucket}/{object} onto itself");
        return err(conn, 400, "", &m);
    }
    let moved = state.buckets.write().ok().and_then(|mut b| {
        let objs = b.get_mut(bucket)?;
        let mut stored = objs.remove(object)?;
        stored.version = objs.get(to).map_or(1, |o| o.version + 1);
        stored.modified = SystemTime::now();
        objs.insert(to.to_string(), stored);
        Some(())
    });
    if moved.is_none() {
        let m = format!("t[{role}]: ais://{bucket}/{object} does not exist");
        return err(conn, 404, "ErrNotFound", &m);
    }
    log(state, role, req, object, 200);
    respond(conn, req, 200, &[], "")
}

/// `mpt-complete` (`ups.complete`, `validatePartsEtag`, `_checkParts`):
/// the uploaded parts must be numbered exactly 1..N and the list must
/// name exactly those (in any order); then the object is their bytes in
/// order and the upload is gone. The error: status, tcode, message.
fn complete(
    state: &State,
    bucket: &str,
    object: &str,
    id: &str,
    mut listed: Vec<CompletedPart>,
) -> Result<(), (u16, &'static str, String)> {
    let mut ups = lock(&state.uploads);
    let Some(up) = ups
        .get(id)
        .filter(|u| u.bucket == bucket && u.object == object)
    else {
        return Err((404, "ErrNotFound", format!("upload {id:?} does not exist")));
    };
    let count = up.parts.len();
    if count == 0 {
        return Err((400, "", "no chunks".into()));
    }
    for (i, n) in up.parts.keys().enumerate() {
        if *n as usize != i + 1 {
            return Err((
                400,
                "",
                format!("chunk at ({i}) has invalid number {n} (count={count})"),
            ));
        }
    }
    if listed.len() != count {
        return Err((
            400,
            "",
            format!(
                "partial completion is not allowed: requested {} parts, have {count}",
                listed.len()
            ),
        ));
    }
    listed.sort_by_key(|p| p.part_number);
    for (i, p) in listed.iter().enumerate() {
        if p.part_number != i as i64 + 1 {
            return Err((
                400,
                "",
                format!(
                    "parts must be exactly 1..{count}: got {} at position {i}",
                    p.part_number
                ),
            ));
        }
    }
    let Some(up) = ups.remove(id) else {
        return Err((404, "ErrNotFound", format!("upload {id:?} does not exist")));
    };
    drop(ups);
    let mut data = Vec::with_capacity(up.parts.values().map(|p| p.data.len()).sum());
    for p in up.parts.into_values() {
        data.extend_from_slice(&p.data);
    }
    store(state, bucket, object, Body::Bytes(Arc::new(data)), None);
    Ok(())
}

/// Answers a body that could not be read: 413 or 400 (the connection is
/// then closed, lingering, by `Conn::finish`), or nothing when the client
/// went away.
pub(super) fn body_error(
    conn: &mut Conn,
    req: &Request,
    state: &State,
    role: &str,
    object: &str,
    e: BodyError,
) -> io::Result<bool> {
    let (status, msg) = match e {
        BodyError::TooLarge => (413, "request body too large".to_string()),
        BodyError::Malformed(why) => (400, format!("malformed request body: {why}")),
        BodyError::Io => {
            log(state, role, req, object, 0);
            return Ok(false);
        }
    };
    log(state, role, req, object, status);
    let body = ais_error(status, "", &msg, &req.method, &req.path);
    respond(conn, req, status, &[], &body)
}

/// The MD5 of `data`.
pub(super) fn md5_of(data: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(data).into()
}
