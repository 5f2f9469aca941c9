//! Integration tests: real processes, real sockets, real shared memory.
//! Every test compares bytes (sha256) and checks that no segment and no
//! worker process outlives it.

mod common;

mod ais_write;
mod cli;
mod concurrency;
mod dcp_cli;
mod dcp_fuzz;
mod dcp_hostile;
mod dcp_load;
mod dcp_malformed;
mod dcp_plan;
mod dcp_reader;
mod dcp_synth;
mod direct;
mod errors;
mod faults;
mod fork_stress;
mod gc;
mod interrupts;
mod kill_points;
mod lifecycle;
mod multiproc;
mod netem;
mod nginx;
mod no_range;
mod outages;
mod progress;
mod put_cli;
mod read_all;
mod recycle;
mod s3;
mod s3rig;
mod serve;
mod soak;
mod store_fs;
mod stream;
mod tail;
mod upload;
