//! Command line: `serve` and `check`. Parses arguments, loads the config, runs the
//! command and maps failures to exit codes (64: bad configuration, 69: cannot serve).

use crate::config::{Config, ConfigError, Tls};
use crate::server::{ServeError, Server};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// An authenticating, authorizing TLS proxy for Docker/OCI registries.
#[derive(Debug, Parser)]
#[command(name = "registry-guard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve: terminate TLS and proxy the Registry HTTP API v2 to the upstream.
    Serve {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Once listening, write the bound address (`ip:port`) to this file; useful with
        /// `listen: 127.0.0.1:0`.
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Check a configuration: keys, values, certificates, key files and secrets.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

pub const EXIT_CONFIG: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, addr_file } => serve(config, addr_file),
        Command::Check { config } => check(config),
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("registry-guard: {e}");
    ExitCode::from(code)
}

fn serve(path: PathBuf, addr_file: Option<PathBuf>) -> ExitCode {
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, &e),
    };
    crate::log::init(cfg.log.format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_UNAVAILABLE, &format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async move {
        let server = match Server::bind(&cfg).await {
            Ok(s) => s,
            Err(e @ ServeError::Config(_)) => return fail(EXIT_CONFIG, &with_file(&path, e)),
            Err(e) => return fail(EXIT_UNAVAILABLE, &e),
        };
        if let Some(f) = &addr_file {
            if let Err(e) = server.write_addr_file(f) {
                return fail(EXIT_UNAVAILABLE, &e);
            }
        }
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Start-up errors from files the config names still say which config file named them.
fn with_file(path: &std::path::Path, e: ServeError) -> String {
    format!("{}: {e}", path.display())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    match check_config(&path) {
        Ok(summary) => {
            println!("{}: OK\n{summary}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_CONFIG, &e),
    }
}

/// Everything `serve` would load, without binding or writing anything.
fn check_config(path: &std::path::Path) -> Result<String, ConfigError> {
    let in_file = |mut e: ConfigError| {
        e.file = Some(path.to_owned());
        e
    };
    let cfg = Config::load(path)?;
    let tls = match &cfg.server.tls {
        Tls::Files { cert, key } => {
            let tls_only = Tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            };
            crate::tls::server_config(&tls_only).map_err(in_file)?;
            format!("TLS from {} and {}", cert.display(), key.display())
        }
        Tls::SelfSigned { ca_out, names } => {
            let dir = ca_out.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir.filter(|d| !d.exists()) {
                if d.parent()
                    .is_some_and(|p| !p.as_os_str().is_empty() && !p.exists())
                {
                    return Err(in_file(ConfigError::new(
                        "server.tls.self_signed.ca_out",
                        format!("neither {} nor its parent exist", d.display()),
                    )));
                }
            }
            format!(
                "TLS self-signed for {}; CA written to {}",
                names.join(", "),
                ca_out.display()
            )
        }
        Tls::Plaintext => "plain HTTP (no TLS)".to_owned(),
    };
    crate::proxy::upstream::Upstream::new(&cfg.upstream).map_err(in_file)?;
    Ok(format!(
        "  listen: {}\n  {tls}\n  upstream: {}",
        cfg.server.listen, cfg.upstream.origin
    ))
}
