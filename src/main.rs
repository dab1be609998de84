//! The `walwatch` binary: parse arguments, set up logging, run, map the outcome to an exit
//! code (0 ok, 1 assertion failed, 2 error). Everything else lives in the library.

mod demo;
mod fault_proxy;
mod harness;
mod slots;
mod snapshot;

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use walwatch::cli::{Cli, Command, LogArgs, WatchArgs};
use walwatch::session;

use harness::Verdict;

/// The default command: watch (and with --until, wait for one event).
async fn watch(args: &WatchArgs, log: &LogArgs) -> anyhow::Result<Verdict> {
    let mut config = args.to_config()?;
    config.progress = !log.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    match args.until()? {
        None => {
            let outcome = session::run(config, stop_signal(args)).await?;
            tracing::debug!(?outcome, "done");
            Ok(Verdict::Done)
        }
        Some((expr, within)) => {
            let until = walwatch::Until {
                expr,
                within,
                proxy_events: args.proxy_events.clone(),
            };
            let report = walwatch::run_until(config, until, stop_signal(args)).await?;
            Ok(harness::conclude(&report, args.report, false))
        }
    }
}

fn init_logging(log: &LogArgs) {
    let default = match (log.quiet, log.verbose) {
        (true, _) => "error",
        (false, 0) => "walwatch=info,warn",
        (false, 1) => "walwatch=debug,info",
        (false, _) => "trace",
    };
    let filter =
        EnvFilter::try_from_env("WALWATCH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("stopping");
}

/// What stops a watch or a recorder: Ctrl-C, SIGTERM, and with --exit-with-parent the death
/// of the process that started it.
async fn stop_signal(args: &WatchArgs) {
    if !args.exit_with_parent {
        return shutdown_signal().await;
    }
    tokio::select! {
        () = shutdown_signal() => {}
        () = parent_gone() => tracing::info!("the process that started walwatch has exited: stopping"),
    }
}

/// The process that started walwatch, read first thing in `main`: a parent that dies while
/// walwatch connects and creates its slot must still count.
static PARENT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Resolves once the process that started this one has exited. An orphan is re-parented (to
/// init or a subreaper), so its parent id changes; that is polled rather than asked of the
/// kernel with PR_SET_PDEATHSIG, which fires when the parent *thread* exits (prctl(2)), and a
/// harness may well start its recorder from a thread that ends before the test run does.
async fn parent_gone() {
    const POLL: std::time::Duration = std::time::Duration::from_millis(200);
    let parent = *PARENT.get_or_init(std::os::unix::process::parent_id);
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(POLL).await;
    }
}

/// The error and its causes on one line, leaving out a cause whose text the message already
/// holds (walwatch's own errors already say what their source said).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn main() -> ExitCode {
    PARENT.get_or_init(std::os::unix::process::parent_id);
    let cli = Cli::try_parse_checked(std::env::args_os()).unwrap_or_else(|e| e.exit());
    init_logging(&cli.log);
    // One thread: decoding and every sink have threads of their own, the runtime only moves
    // bytes. On the thread that runs the replication loop, the loop waits on the socket
    // itself; with worker threads, a worker would wait on it and wake this thread for every
    // read (twice the context switches of a drain, measured: issue 16's note). The proxy picks
    // its own (`--threads`, default one: see benches/proxy.sh).
    let workers = match &cli.command {
        Some(Command::Proxy(args)) => usize::from(args.threads),
        _ => 1,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walwatch: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result: anyhow::Result<Verdict> = runtime.block_on(async {
        match cli.command {
            Some(Command::Demo(args)) => demo::run(args).await.map(|()| Verdict::Done),
            Some(Command::Watch(args)) => watch(&args, &cli.log).await,
            None => watch(&cli.watch, &cli.log).await,
            Some(Command::Record(args)) => {
                let config = args.to_record_config()?;
                session::run(config, stop_signal(&args)).await?;
                Ok(Verdict::Done)
            }
            Some(Command::Mark(args)) => harness::mark(&args).await,
            Some(Command::Assert(args)) => harness::assert(&args).await,
            Some(Command::Slots(args)) => slots::run(&args).await,
            Some(Command::Snapshot(args)) => snapshot::run(&args).await,
            Some(Command::Proxy(args)) => fault_proxy::run(&args, shutdown_signal()).await,
            Some(Command::Fault(args)) => fault_proxy::fault(&args).await,
            Some(Command::Replay(args)) => {
                let config = args.to_config()?;
                let outcome =
                    tokio::task::spawn_blocking(move || walwatch::replay::run(&config)).await??;
                tracing::debug!(?outcome, "replayed");
                Ok(Verdict::Done)
            }
        }
    });
    match result {
        Ok(Verdict::Done | Verdict::Passed) => ExitCode::SUCCESS,
        Ok(Verdict::Failed) => ExitCode::from(1),
        Err(e) => {
            if e.downcast_ref::<walwatch::Error>()
                .is_some_and(|e| e.is_broken_pipe())
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("walwatch: error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}
