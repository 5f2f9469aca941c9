//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Download large objects as fast as the storage allows: forked workers
/// fetch byte ranges in parallel straight into /dev/shm.
#[derive(Debug, Parser)]
#[command(name = "shmfetch", version, about, after_help = EXIT_STATUS)]
pub struct Cli {
    /// More logging on stderr (-v: debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// No progress bar and no summary line (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The exit statuses, shown by `shmfetch --help`.
const EXIT_STATUS: &str = "Exit status:
  0    success; also when the reader of stdout goes away (EPIPE), silently
  1    failure: the message says what failed
  2    usage error: a bad flag, argument or value
  129  SIGHUP, 130 SIGINT (Ctrl-C), 143 SIGTERM: the download stopped, its
       shared memory, part file and worker processes are gone";

/// A bad flag or argument found after parsing (clap reports its own):
/// exits 2, like clap's errors.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch an object to a file or stdout.
    ///
    /// SOURCE is s3://BUCKET/KEY (AWS credentials and region from the
    /// environment or ~/.aws, or --no-sign-request), ais://BUCKET/OBJECT
    /// (with AIS_ENDPOINT or --endpoint; ais://@aws/BUCKET/OBJECT for an
    /// AIStore remote bucket), an http(s):// URL, or a local path.
    #[command(after_help = "Examples:\n  \
        shmfetch get s3://my-bucket/data/shard-000.tar -o shard.tar -w 16\n  \
        shmfetch get s3://bench/obj --endpoint-url http://127.0.0.1:9000 --no-sign-request -o -\n  \
        AIS_ENDPOINT=http://aistore:51080 shmfetch get ais://data/shard-000.tar -o shard.tar -w 16\n  \
        shmfetch get https://host/big.bin -o - --mode stream | sha256sum")]
    Get(GetArgs),
    /// Upload a file or stdin to S3, AIStore or a local path: the parts go
    /// out in parallel from shared memory (S3 and AIStore multipart
    /// uploads); nothing is visible at DEST until every byte is stored, and
    /// a failed or interrupted upload is aborted.
    Put(PutArgs),
    /// Serve a directory through the AIStore object-read API (a gateway
    /// redirecting to targets): DIR/BUCKET/OBJECT is ais://BUCKET/OBJECT.
    ///
    /// Targets listen on the IP of --addr and redirects name its host, so
    /// other hosts can follow them (bind 0.0.0.0 to serve every interface).
    /// With AIS_AUTHN_TOKEN set, the gateway requires that bearer token.
    #[command(after_help = "Example:\n  \
        shmfetch serve ./data --addr 10.0.0.5:51080 --threads 64\n  \
        AIS_ENDPOINT=http://10.0.0.5:51080 shmfetch get ais://bucket/object -o object")]
    Serve(ServeArgs),
    /// Remove segments and part files left by dead shmfetch processes
    /// (default: in /dev/shm).
    ///
    /// A segment is removed only when no process holds its lock, so the
    /// segments of live processes in other PID namespaces (containers
    /// sharing /dev/shm) are kept. A part file (.NAME.shmfetch-part-PID, what
    /// `get` writes before renaming it to NAME) is removed when its pid is
    /// dead and no process holds its lock: run `shmfetch gc DIR` on an output
    /// directory after a `get` was killed with SIGKILL.
    Gc(GcArgs),
    /// Read PyTorch Distributed Checkpoints (dcp.save) without Python.
    ///
    /// CKPT is a checkpoint directory: s3://BUCKET/PREFIX/,
    /// ais://BUCKET/PREFIX/ (with AIS_ENDPOINT or --endpoint), an http(s)://
    /// URL ending in /, or a local directory.
    #[command(subcommand)]
    Dcp(DcpCommand),
}

#[derive(Debug, Subcommand)]
pub enum DcpCommand {
    /// List every storage item: FQN, dtype, shape, chunk, file, offset, length.
    #[command(after_help = "Example:\n  shmfetch dcp ls ais://ckpts/run-7/step-1000/")]
    Ls(DcpLsArgs),
    /// Export full tensors to a .safetensors file, fetching only the byte
    /// ranges they need (bytes items are listed as skipped).
    #[command(after_help = "Examples:\n  \
        shmfetch dcp export ais://ckpts/step-1000/ -o model.safetensors -w 16 --stats\n  \
        shmfetch dcp export ./step-1000 -o emb.safetensors --only model.embed.weight --max-gap 0")]
    Export(DcpExportArgs),
    /// Write one item's raw bytes (a bytes item: the torch.save archive of
    /// the Python object).
    #[command(after_help = "Example:\n  shmfetch dcp get ./step-1000 config.lr -o lr.pt")]
    Get(DcpGetArgs),
}

#[derive(Debug, Args)]
pub struct CkptArgs {
    /// Checkpoint directory: s3://BUCKET/PREFIX/, ais://BUCKET/PREFIX/,
    /// http(s)://URL/ or a path.
    pub ckpt: String,
    /// AIStore gateway URL (overrides AIS_ENDPOINT).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub s3: crate::s3_args::S3Args,
    /// Worker processes.
    #[arg(short, long, default_value_t = shmfetch::worker::DEFAULT_WORKERS)]
    pub workers: usize,
    /// Bytes per range request of a worker (8MiB, 64M...). Default: the
    /// server's hint, else 8MiB.
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DcpLsArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// Print the parsed metadata as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The reader kinds of a checkpoint load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReaderArg {
    /// Fetch every data file whole.
    Sequential,
    /// One ranged request per read, through --buffer-size.
    RangeBased,
    /// Only the needed items, coalesced by --max-gap, prefetched.
    DcpOptimized,
}

#[derive(Debug, Args)]
pub struct DcpExportArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// Output .safetensors file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Export only this tensor FQN (repeatable). Default: every tensor.
    #[arg(long = "only", value_name = "FQN")]
    pub only: Vec<String>,
    /// Reader kind for the data files.
    #[arg(long, value_enum, default_value_t = ReaderArg::DcpOptimized)]
    pub reader: ReaderArg,
    /// dcp-optimized: largest gap between two needed items fetched in one
    /// request (0: touching items only; "unbounded": one request per file).
    #[arg(long, default_value = "32MiB", value_parser = parse_gap, allow_hyphen_values = true)]
    pub max_gap: shmfetch::dcp::MaxGap,
    /// range-based: buffer size (0 disables it).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub buffer_size: u64,
    /// Print bytes fetched, requests made and bytes in the checkpoint.
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Args)]
pub struct DcpGetArgs {
    #[command(flatten)]
    pub ckpt: CkptArgs,
    /// The item's FQN (a bytes item, e.g. config.lr).
    pub fqn: String,
    /// Output file, or - for stdout.
    #[arg(short, long)]
    pub output: String,
}

/// How `get` holds the object on its way to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One shared segment of the object's size, then written out.
    ReadAll,
    /// A ring of WORKERS slots, written out in order as they fill.
    Stream,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// s3://BUCKET/KEY, ais://BUCKET/OBJECT, http(s)://URL, file://PATH or PATH.
    pub source: String,
    /// Output file, or - for stdout. Default: the object's base name.
    #[arg(short, long)]
    pub output: Option<String>,
    /// Bytes per range request (8MiB, 64M, 1048576). Default: the server's
    /// hint, else 8MiB.
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// read-all: one object-sized segment; stream: bounded memory.
    #[arg(long, value_enum, default_value_t = Mode::ReadAll)]
    pub mode: Mode,
    /// AIStore: read from the target that holds the object (found in the
    /// cluster map) instead of through the gateway's redirect; falls back
    /// to the gateway when the cluster refuses direct access.
    #[arg(long)]
    pub direct: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The file to upload, or - for stdin.
    pub source: String,
    /// s3://BUCKET/KEY, ais://BUCKET/OBJECT or a local PATH; a destination
    /// ending in / gets the source's file name.
    pub dest: String,
    /// Bytes per part (8MiB, 64M, ...; S3 needs at least 5MiB). Default:
    /// 8MiB, larger when a file needs more than 10000 parts.
    #[arg(long, value_parser = parse_size)]
    pub part_size: Option<u64>,
    #[command(flatten)]
    pub net: NetArgs,
}

/// The flags of a transfer: workers, where the stores are, retries and
/// timeouts (shared by get and put).
#[derive(Debug, Args)]
pub struct NetArgs {
    /// Worker processes.
    #[arg(short, long, default_value_t = shmfetch::worker::DEFAULT_WORKERS)]
    pub workers: usize,
    /// AIStore gateway URL (overrides AIS_ENDPOINT).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub s3: crate::s3_args::S3Args,
    /// Attempts per range (or part) for retryable errors (5xx, 408, 429,
    /// resets, refused connections, timeouts, short bodies); a retried
    /// range resumes from its last byte. Default: no count limit,
    /// --retry-timeout decides.
    #[arg(long)]
    pub attempts: Option<u32>,
    /// Seconds after a range's first attempt during which it is retried
    /// (backoff 0.1 s doubling to 10 s; each backoff is reported with a
    /// warning). The default survives a server restart of a minute or so.
    #[arg(long, default_value_t = shmfetch::source::retry::DEFAULT_MAX_ELAPSED.as_secs_f64())]
    pub retry_timeout: f64,
    /// Seconds one socket read may block before the range is retried.
    #[arg(long, default_value_t = shmfetch::source::http::DEFAULT_READ_TIMEOUT.as_secs_f64())]
    pub read_timeout: f64,
    /// Seconds a TCP connect may take.
    #[arg(long, default_value_t = shmfetch::source::http::DEFAULT_CONNECT_TIMEOUT.as_secs_f64())]
    pub connect_timeout: f64,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory whose subdirectories are buckets.
    pub dir: PathBuf,
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:51080")]
    pub addr: String,
    /// Number of target servers behind the gateway.
    #[arg(long, default_value_t = 2)]
    pub targets: usize,
    /// Threads serving connections (of the gateway and every target); more
    /// connections than threads wait their turn.
    #[arg(long, default_value_t = 32)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Directory of the segments [default: /dev/shm].
    #[arg(value_name = "DIR", conflicts_with = "dir_flag")]
    pub dir: Option<PathBuf>,
    /// The same as DIR.
    #[arg(long = "dir", id = "dir_flag", value_name = "DIR")]
    pub dir_flag: Option<PathBuf>,
}

impl GcArgs {
    /// The directory to clean: DIR or --dir, else /dev/shm.
    pub fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .or_else(|| self.dir_flag.clone())
            .unwrap_or_else(|| PathBuf::from(shmfetch::shm::DEFAULT_SHM_DIR))
    }
}

fn parse_gap(s: &str) -> Result<shmfetch::dcp::MaxGap, String> {
    match s.to_ascii_lowercase().as_str() {
        "unbounded" | "inf" | "infinite" | "none" => Ok(shmfetch::dcp::MaxGap::Unbounded),
        _ if s.starts_with('-') => Err("max gap must be >= 0 (or \"unbounded\")".into()),
        _ => parse_size(s).map(shmfetch::dcp::MaxGap::Bytes),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    shmfetch::range::parse_size(s).map_err(|e| e.to_string())
}
