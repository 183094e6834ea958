//! The `coremcp` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mimalloc::MiMalloc;

use coremcp::config::{self, Config};
use coremcp::log::Level;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// The fastest MCP tool server: files, code search and SQLite, one pinned shard per CPU.
#[derive(Parser)]
#[command(name = "coremcp", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over Streamable HTTP (POST /mcp), plus /metrics, /healthz, /readyz and the direct API (/v1/…).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (default 127.0.0.1:7411). Port 0 picks a free port (printed at start-up).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Number of shards (pinned executors); default one per online CPU.
        #[arg(long)]
        shards: Option<usize>,
        /// Pin shard i to the i-th CPU of this comma-separated list (e.g. 1 or 0,1).
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
        /// Host name (without port) accepted in the Host header besides loopback names; repeat for more.
        #[arg(long = "allowed-host")]
        allowed_hosts: Vec<String>,
        /// Origin (scheme://host[:port]) allowed to call the server; repeat for more. Default: loopback origins.
        #[arg(long = "allowed-origin")]
        allowed_origins: Vec<String>,
        /// Spin this many microseconds before a shard parks: lower latency at light load, more CPU.
        #[arg(long)]
        spin_before_park_us: Option<u64>,
        /// After a request, keep looking for the next one this many microseconds before waiting: lower latency, a CPU spinning.
        #[arg(long)]
        poll_spin_us: Option<u64>,
        /// After a request, wait this many microseconds in epoll for the next one before parking (0: park at once).
        #[arg(long)]
        poll_wait_us: Option<u64>,
        /// On SIGTERM/SIGINT, how long calls in flight may take to finish, in milliseconds.
        #[arg(long)]
        shutdown_timeout_ms: Option<u64>,
    },
    /// Serve MCP on stdin/stdout (one client; logs go to stderr).
    Stdio {
        #[command(flatten)]
        common: Common,
    },
    /// Check a configuration file without serving: exit 0 if it is valid, else 1 with the file, line and key at fault.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// TOML configuration file (flags override it); see tuning/default.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A directory the file tools may read; repeat for more. The first is where relative paths resolve. Default: the current directory.
    #[arg(long = "root")]
    roots: Vec<PathBuf>,
    /// A SQLite database to serve read-only, named by its file stem; repeat for more.
    #[arg(long = "db")]
    dbs: Vec<PathBuf>,
    /// Default deadline of a tool call, in milliseconds (default 30000).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Override a limit, e.g. --limit max_body_bytes=1048576; repeat for more (see README for the names).
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// Log level: error, warn, info or debug (default info; or set COREMCP_LOG).
    #[arg(long)]
    log_level: Option<Level>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            common,
            listen,
            shards,
            cpus,
            allowed_hosts,
            allowed_origins,
            spin_before_park_us,
            poll_spin_us,
            poll_wait_us,
            shutdown_timeout_ms,
        } => build(common).and_then(|mut cfg| {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(n) = shards {
                cfg.shards = n;
            }
            if !cpus.is_empty() {
                cfg.cpus = cpus;
            }
            if !allowed_hosts.is_empty() {
                cfg.access.allowed_hosts = allowed_hosts;
            }
            if !allowed_origins.is_empty() {
                cfg.access.allowed_origins = allowed_origins;
            }
            if let Some(us) = spin_before_park_us {
                cfg.spin_before_park = (us > 0).then(|| Duration::from_micros(us));
            }
            if let Some(us) = poll_spin_us {
                cfg.poll_spin = config::pump_window(us, config::MAX_POLL_SPIN_US)
                    .map_err(|e| format!("--poll-spin-us: {e}"))?;
            }
            if let Some(us) = poll_wait_us {
                cfg.poll_wait = config::pump_window(us, config::MAX_POLL_WAIT_US)
                    .map_err(|e| format!("--poll-wait-us: {e}"))?;
            }
            if let Some(ms) = shutdown_timeout_ms {
                cfg.shutdown_timeout = Duration::from_millis(ms.max(1));
            }
            coremcp::server::serve(cfg)
        }),
        Command::Stdio { common } => build(common).and_then(coremcp::transport::stdio::serve),
        Command::CheckConfig { file } => {
            return match check_config(&file) {
                Ok(summary) => {
                    println!("{}: ok ({summary})", file.display());
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("coremcp: invalid config: {why}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            coremcp::log!(Error, why);
            ExitCode::FAILURE
        }
    }
}

/// Everything `serve` would check before binding: the file parses, its keys and
/// values are valid, its roots are directories and its databases open read-only.
fn check_config(file: &std::path::Path) -> Result<String, String> {
    let cfg = config::file::load(file)?;
    coremcp::storage::db::Databases::new(&cfg.databases, &cfg.cache)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(format!(
        "listen {}, {} root(s), {} database(s), {} tool(s) enabled",
        cfg.listen,
        cfg.roots.len(),
        cfg.databases.len(),
        coremcp::tools::Registry::configured(&cfg).len()
    ))
}

/// The configuration: defaults, then the file, then the flags.
fn build(common: Common) -> Result<Config, String> {
    let mut cfg = match &common.config {
        Some(path) => config::file::load(path)?,
        None => Config::default(),
    };
    let level = common
        .log_level
        .or(match std::env::var(coremcp::log::LOG_ENV) {
            Ok(v) => Some(
                v.parse::<Level>()
                    .map_err(|e| format!("{}: {e}", coremcp::log::LOG_ENV))?,
            ),
            Err(_) => None,
        })
        .or(cfg.log_level)
        .unwrap_or(Level::Info);
    coremcp::log::set_level(level);
    cfg.log_level = Some(level);
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    if !common.roots.is_empty() {
        cfg.roots.clear();
        for root in &common.roots {
            cfg.roots
                .push(config::resolve_root(&cwd, root).map_err(|e| format!("--{e}"))?);
        }
    }
    if cfg.roots.is_empty() {
        cfg.roots.push(cwd.clone());
    }
    if !common.dbs.is_empty() {
        cfg.databases.clear();
        for path in &common.dbs {
            let db = config::resolve_database(&cwd, path, &cfg.databases)
                .map_err(|e| format!("--db {}", e.trim_start_matches("database ")))?;
            cfg.databases.push(db);
        }
    }
    if let Some(ms) = common.timeout_ms {
        cfg.timeout = Duration::from_millis(ms.max(1));
    }
    for item in &common.limits {
        config::set_limit(&mut cfg.limits, item)?;
    }
    Ok(cfg)
}
