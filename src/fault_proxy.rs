//! `walwatch proxy` and `walwatch fault`: arguments into the library's proxy and control
//! client.

use anyhow::Context;

use walwatch::cli::{FaultAction, FaultArgs, ProxyArgs};
use walwatch::proxy::control::{self, Command, ControlConfig};
use walwatch::proxy::{Proxy, RuleSpec, rule};

use crate::harness::Verdict;

/// Runs the proxy until `stop` (Ctrl-C, SIGTERM).
pub async fn run(args: &ProxyArgs, stop: impl Future<Output = ()>) -> anyhow::Result<Verdict> {
    // Every rule is checked before anything is bound.
    let mut specs = Vec::new();
    for path in &args.rules {
        specs.extend(rule::load_file(path).map_err(walwatch::proxy::ProxyError::from)?);
    }
    for text in &args.faults {
        let spec: RuleSpec = text.parse().map_err(walwatch::proxy::ProxyError::from)?;
        spec.compile().map_err(walwatch::proxy::ProxyError::from)?;
        specs.push(spec);
    }
    let mut builder = Proxy::builder(&args.upstream)
        .listen(args.listen)
        .seed(args.seed)
        .log_queries(args.log_queries);
    for spec in specs {
        builder = builder.fault(spec);
    }
    if let Some(path) = &args.events {
        builder = builder.events_file(path);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        builder = builder.tls(cert, key);
    }
    if let Some(listen) = args.control {
        builder = builder.control(ControlConfig {
            listen,
            token: args.control_token.clone(),
        });
    }
    let proxy = builder.start().await.map_err(walwatch::Error::from)?;
    // The addresses on stderr, as a line a harness can wait for.
    tracing::info!(
        "proxy listening on {}{}",
        proxy.addr(),
        proxy
            .control_addr()
            .map(|a| format!(", control API on http://{a}"))
            .unwrap_or_default()
    );
    eprintln!(
        "walwatch proxy: listening on {} (upstream {}){}",
        proxy.addr(),
        args.upstream,
        proxy
            .control_addr()
            .map(|a| format!(", control on {a}"))
            .unwrap_or_default()
    );
    stop.await;
    proxy.stop();
    Ok(Verdict::Done)
}

/// `walwatch fault add|rm|ls|clear`: prints the control API's JSON answer on stdout.
pub async fn fault(args: &FaultArgs) -> anyhow::Result<Verdict> {
    let command = match &args.action {
        FaultAction::Add { rule } => {
            let spec: RuleSpec = rule.parse().map_err(walwatch::proxy::ProxyError::from)?;
            Command::Add(Box::new(spec))
        }
        FaultAction::Rm { id } => Command::Remove(*id),
        FaultAction::Ls => Command::List,
        FaultAction::Clear => Command::Clear,
    };
    let answer = control::request(&args.proxy, args.token.as_deref(), &command)
        .await
        .map_err(walwatch::proxy::ProxyError::from)
        .with_context(|| format!("the proxy's control API at {}", args.proxy))?;
    println!("{answer}");
    Ok(Verdict::Done)
}
