//! The `coremcp` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mimalloc::MiMalloc;

use coremcp::config::{self, Config, Database};

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
    /// Serve MCP over Streamable HTTP (POST /mcp).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on. Port 0 picks a free port (printed at start-up).
        #[arg(long, default_value = config::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
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
    },
    /// Serve MCP on stdin/stdout (one client; logs go to stderr).
    Stdio {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// TOML configuration file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A directory the file tools may read; repeat for more. The first is where relative paths resolve. Default: the current directory.
    #[arg(long = "root")]
    roots: Vec<PathBuf>,
    /// A SQLite database to serve read-only, named by its file stem; repeat for more.
    #[arg(long = "db")]
    dbs: Vec<PathBuf>,
    /// Default deadline of a tool call, in milliseconds.
    #[arg(long, default_value_t = config::DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    /// Override a limit, e.g. --limit max_body_bytes=1048576; repeat for more (see README for the names).
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
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
        } => build(common).and_then(|mut cfg| {
            cfg.listen = listen;
            cfg.shards = shards.unwrap_or(0);
            cfg.cpus = cpus;
            cfg.access.allowed_hosts = allowed_hosts;
            cfg.access.allowed_origins = allowed_origins;
            cfg.spin_before_park = spin_before_park_us.map(Duration::from_micros);
            coremcp::server::serve(cfg)
        }),
        Command::Stdio { common } => build(common).and_then(coremcp::transport::stdio::serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("coremcp: {why}");
            ExitCode::FAILURE
        }
    }
}

fn build(common: Common) -> Result<Config, String> {
    if let Some(path) = &common.config {
        return Err(format!(
            "--config {}: configuration files are not supported yet; use the command-line flags",
            path.display()
        ));
    }
    let mut cfg = Config::default();
    let roots = if common.roots.is_empty() {
        vec![std::env::current_dir().map_err(|e| format!("current directory: {e}"))?]
    } else {
        common.roots
    };
    for root in roots {
        let real = root
            .canonicalize()
            .map_err(|e| format!("--root {}: {e}", root.display()))?;
        if !real.is_dir() {
            return Err(format!("--root {}: not a directory", root.display()));
        }
        cfg.roots.push(real);
    }
    for path in common.dbs {
        let real = path
            .canonicalize()
            .map_err(|e| format!("--db {}: {e}", path.display()))?;
        let name = real
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("--db {}: the file name must be UTF-8", path.display()))?
            .to_string();
        if cfg.databases.iter().any(|d| d.name == name) {
            return Err(format!(
                "--db {}: another database is already named {name:?} (names are file stems)",
                path.display()
            ));
        }
        cfg.databases.push(Database { name, path: real });
    }
    cfg.timeout = Duration::from_millis(common.timeout_ms.max(1));
    for item in &common.limits {
        config::set_limit(&mut cfg.limits, item)?;
    }
    Ok(cfg)
}
