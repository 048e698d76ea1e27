//! The `agentq` binary: parse the command line, set up logging, run, and turn an error into one
//! message and an exit code. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use agentq::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    // A keeper (`agentq keep`, one per agent on Linux) starts before anything else: it runs for
    // every attempt, so it pays for no parsing, logging or runtime it does not use.
    #[cfg(target_os = "linux")]
    {
        let mut args = std::env::args_os().skip(1);
        if args.next().as_deref() == Some(agentq_platform::process::KEEP_COMMAND.as_ref()) {
            agentq_platform::process::keep(&args.collect::<Vec<_>>());
        }
    }
    let cli = Cli::parse();
    if let Command::Guard(args) = &cli.command {
        // Before logging and the runtime: the guardian is one blocking read and a /proc scan.
        agentq::procs::guard(&args.owner);
        return ExitCode::SUCCESS;
    }
    let daemon = matches!(cli.command, Command::Run(_));
    if daemon {
        agentq_platform::host::few_malloc_arenas();
    }
    if !daemon {
        // Like other Unix tools, end quietly when the reader of our output goes away
        // (`agentq tasks | head`); Rust's default turns that into a panic. The daemon keeps
        // ignoring SIGPIPE: a closed log pipe must not kill it.
        agentq_platform::signals::default_sigpipe();
    }
    init_logging(cli.log_format, if daemon { "info" } else { "warn" });

    let runtime = if daemon {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        // A one-shot command needs no thread pool of its own: it starts faster without one.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agentq: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(agentq::commands::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentq: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Logs go to stderr, so stdout carries only data. `AGENTQ_LOG` (e.g. `debug`, `agentq=trace`)
/// overrides the level. The PostgreSQL connection pool's own warnings ("Connection error: db
/// error" for each pooled connection a server restart ends) are left out unless `AGENTQ_LOG`
/// names the pool (`deadpool.postgres=warn`): they name no cause, and what a broken connection
/// did to agentq is said by agentq.
fn init_logging(format: LogFormat, default_level: &str) {
    let mut wanted = std::env::var("AGENTQ_LOG").unwrap_or_else(|_| default_level.to_string());
    if !wanted.contains("deadpool") {
        wanted.push_str(",deadpool.postgres=error");
    }
    let filter = EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && agentq_platform::term::color_allowed(),
            )
            .init(),
    }
}
