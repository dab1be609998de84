//! The binary's harness commands (`mark`, `assert`): arguments in, verdict and report out.
//! The checks themselves are in the library (`walwatch::assert`).

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::NoTls;

use walwatch::assert::file::{self, Expect, FileCheck, Input, Kind, Since};
use walwatch::cli::{
    AssertArgs, AssertCommon, AssertKind, MarkArgs, ReportArg, conn_params, duration_arg,
};
use walwatch::marker;
use walwatch::proxy::control::{self, Command};

/// How a command ended, for the exit code.
pub enum Verdict {
    /// Not an assertion: it ran.
    Done,
    Passed,
    Failed,
}

pub(crate) async fn connect(dsn: Option<&str>) -> anyhow::Result<tokio_postgres::Client> {
    let params = conn_params(dsn)?;
    let target = params.target();
    let (client, conn) = params
        .tokio_postgres_config()
        .connect(NoTls)
        .await
        .map_err(walwatch::Error::from)
        .with_context(|| format!("cannot connect to {target}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// Prints the report as asked and turns it into a verdict. `json_on_stdout`: where a JSON
/// report goes (stdout for `assert`, stderr for `watch --until`, whose stdout carries events).
pub fn conclude(report: &walwatch::Report, format: ReportArg, json_on_stdout: bool) -> Verdict {
    match format {
        ReportArg::Json => {
            let json =
                serde_json::to_string(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            if json_on_stdout {
                println!("{json}");
            } else {
                eprintln!("{json}");
            }
        }
        ReportArg::Text if !report.passed => eprint!("{report}"),
        ReportArg::Text => {
            tracing::info!("assertion {} passed: {}", report.assertion, report.outcome)
        }
    }
    if report.passed {
        Verdict::Passed
    } else {
        Verdict::Failed
    }
}

/// Who writes --input, when its first line says.
fn recorder_of(args: &MarkArgs) -> anyhow::Result<Option<marker::RecorderInfo>> {
    let Some(input) = &args.input else {
        return Ok(None);
    };
    let recorder = file::sniff(input)?.recorder;
    if recorder.is_none() {
        tracing::warn!(
            "{} does not say which recorder writes it (a recording on a permanent slot, or by an \
             older walwatch): the mark is for every recorder on the database",
            input.display()
        );
    }
    Ok(recorder)
}

/// `walwatch mark NAME`: emits the marker through the database (for the recorder of --input or
/// --recorder alone, else for every recorder), prints its LSN, and with --proxy records it in
/// each fault proxy's events; with --input, waits for it in the recording.
pub async fn mark(args: &MarkArgs) -> anyhow::Result<Verdict> {
    let within = duration_arg("--within", &args.within)?;
    if args.name == Since::START {
        anyhow::bail!(
            "a mark cannot be named `{}`: `--since {}` means the beginning of the recording; \
             choose another name",
            Since::START,
            Since::START
        );
    }
    let recorder = recorder_of(args)?;
    let scope = args
        .recorder
        .clone()
        .or_else(|| recorder.as_ref().map(|r| r.slot.clone()));
    let before = match &args.input {
        Some(input) => Some(FileCheck::count_marks(input, &args.name).await?),
        None => None,
    };
    let client = connect(args.dsn.as_deref()).await?;
    if let (Some(input), Some(info)) = (&args.input, &recorder)
        && let Some(why) = file::recorder_gone(&client, info).await?
    {
        return Err(file::gone_error(input, info, &why).into());
    }
    let prefix = marker::scoped(marker::MARK_PREFIX, scope.as_deref());
    let lsn = marker::emit(&client, &prefix, &args.name).await?;
    println!("{lsn}");
    // After the database's mark: an event the proxy records after the mark in the WAL.
    for proxy in &args.proxy {
        let command = Command::Mark(args.name.clone());
        control::request(proxy, args.token.as_deref(), &command)
            .await
            .map_err(walwatch::proxy::ProxyError::from)
            .with_context(|| format!("recording the mark in the proxy at {proxy}"))?;
    }
    if let (Some(input), Some(before)) = (&args.input, before)
        && !FileCheck::await_mark(
            input,
            &args.name,
            before,
            within,
            recorder.as_ref().map(|r| (&client, r)),
        )
        .await?
    {
        anyhow::bail!(
            "the mark `{}` did not appear in {} within {}: is `walwatch record` running on this \
             database and writing to that file?",
            args.name,
            input.display(),
            walwatch::assert::human(within)
        );
    }
    Ok(Verdict::Done)
}

/// The check `common` describes; `default` is where its window opens without --since.
async fn check(common: &AssertCommon, default: Since) -> anyhow::Result<FileCheck> {
    let fence_timeout = duration_arg("--fence-timeout", &common.fence_timeout)?;
    let recordings = common.input.iter().map(|path| Input {
        path: path.clone(),
        kind: Kind::Recording,
    });
    let proxy_events = common.proxy_events.iter().map(|path| Input {
        path: path.clone(),
        kind: Kind::ProxyEvents,
    });
    let inputs: Vec<Input> = recordings.chain(proxy_events).collect();
    // Proxy events need no fence; a recording is fenced through the database.
    let db = if common.no_fence || common.input.is_empty() {
        None
    } else {
        Some(connect(common.dsn.as_deref()).await.context(
            "the assertion fences through the database (pass --dsn, or --no-fence for a recording that has ended)",
        )?)
    };
    let since = Since::from_arg(common.since.as_deref(), default);
    Ok(FileCheck::prepare(inputs, &common.where_, since, db, fence_timeout).await?)
}

/// `walwatch assert eventually|never|count`.
pub async fn assert(args: &AssertArgs) -> anyhow::Result<Verdict> {
    let (common, report) = match &args.kind {
        AssertKind::Eventually { common, within } => {
            let within: Duration = duration_arg("--within", within)?;
            let check = check(common, Since::Call).await?;
            (common, check.eventually(within).await?)
        }
        AssertKind::Never { common, during } => {
            let during = during
                .as_deref()
                .map(|d| duration_arg("--during", d))
                .transpose()?;
            (
                common,
                check(common, Since::Start).await?.never(during).await?,
            )
        }
        AssertKind::Count {
            common,
            equals,
            at_least,
            at_most,
        } => {
            let expect = match (equals, at_least, at_most) {
                (Some(n), _, _) => Expect::Equals(*n),
                (_, Some(n), _) => Expect::AtLeast(*n),
                (_, _, Some(n)) => Expect::AtMost(*n),
                _ => anyhow::bail!("count needs --equals, --at-least or --at-most"),
            };
            (
                common,
                check(common, Since::Start).await?.count(expect).await?,
            )
        }
    };
    Ok(conclude(&report, common.report, true))
}
