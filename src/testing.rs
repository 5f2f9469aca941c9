//! Test support, also used by the benchmark binary (`shmfetch serve` has a
//! server of its own, without fault injection).
//!
//! * [`content`] — deterministic object bytes `f(seed, offset)`, so any
//!   range can be checked on its own, and their sha256.
//! * [`server`] — a loopback server speaking the AIStore object-read API:
//!   a gateway that checks the bearer token and redirects (301 GET, 307
//!   HEAD) to one of several targets, which answer HEAD, ranged GET (206,
//!   416) and AIS JSON errors; faults can be scripted per request.

pub mod content;
pub mod server;
