//! `walwatch demo`: a newcomer's first minute. Starts a throwaway PostgreSQL (initdb in a temp
//! dir), creates `orders` and `users`, writes a little traffic and shows it live. Ctrl-C (or
//! `--seconds`) stops it and removes everything it created.

use std::time::Duration;

use anyhow::Context;
use tokio_postgres::NoTls;

use walwatch::cli::{DemoArgs, stdout_format};
use walwatch::config::{Config, SinkSpec};
use walwatch::filter::TablePattern;
use walwatch::pg::params::ConnParams;
use walwatch::scratch::{ScratchCluster, ScratchOptions};
use walwatch::session;

const SCHEMA: &str = "
CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    user_id int REFERENCES users(id),
    item text NOT NULL,
    status text NOT NULL DEFAULT 'new',
    amount numeric(10,2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Old values on UPDATE, so the view can show what changed (old -> new).
ALTER TABLE orders REPLICA IDENTITY FULL;";

const ITEMS: &[(&str, &str)] = &[
    ("book", "12.50"),
    ("lamp", "39.90"),
    ("tea", "4.20"),
    ("chair", "89.00"),
    ("pen", "1.99"),
];
const NAMES: &[&str] = &["ada", "grace", "linus", "barbara", "ken"];

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    tracing::info!("starting a throwaway PostgreSQL (initdb in a temporary directory)...");
    let cluster = tokio::task::spawn_blocking(|| ScratchCluster::start(ScratchOptions::default()))
        .await
        .context("the cluster start-up task failed")??;
    tracing::info!(
        "PostgreSQL is up on 127.0.0.1:{}, data directory {}",
        cluster.port(),
        cluster.handle().root_dir().display()
    );
    let result = watch(&cluster, &args).await;
    tracing::info!("stopping PostgreSQL and removing its directory");
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .context("the cluster stop task failed")??;
    result
}

async fn watch(cluster: &ScratchCluster, args: &DemoArgs) -> anyhow::Result<()> {
    let dsn = cluster.dsn("walwatch");
    let (client, conn) = tokio_postgres::connect(&dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(SCHEMA)
        .await
        .context("creating the demo tables")?;

    let conn = ConnParams::resolve(Some(&dsn), &|_| None, None)?;
    let mut config = Config::new(conn);
    config.tables = vec![
        TablePattern::parse("orders").map_err(anyhow::Error::msg)?,
        TablePattern::parse("users").map_err(anyhow::Error::msg)?,
    ];
    config.sinks = vec![SinkSpec::Stdout(stdout_format(args.format, args.color))];
    if args.seconds.is_none() {
        tracing::info!("Ctrl-C to stop");
    }

    let seconds = args.seconds;
    let stop = async move {
        match seconds {
            Some(s) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(s)) => {}
                    _ = crate::shutdown_signal() => {}
                }
            }
            None => crate::shutdown_signal().await,
        }
    };
    let traffic = tokio::spawn(traffic(client));
    let outcome = session::run(config, stop).await;
    traffic.abort();
    outcome?;
    Ok(())
}

/// A small shop: users sign up, orders are placed, paid, shipped, sometimes cancelled.
async fn traffic(client: tokio_postgres::Client) -> anyhow::Result<()> {
    let mut tick: usize = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(800)).await;
        tick += 1;
        let name = NAMES[tick % NAMES.len()];
        if tick <= NAMES.len() {
            client
                .execute(
                    "INSERT INTO users (name, email) VALUES ($1, $2)",
                    &[&name, &format!("{name}@example.com")],
                )
                .await?;
            continue;
        }
        let (item, amount) = ITEMS[tick % ITEMS.len()];
        let user_id = (tick % NAMES.len()) as i32 + 1;
        client
            .execute(
                &format!("INSERT INTO orders (user_id, item, amount) VALUES ($1, $2, {amount})"),
                &[&user_id, &item],
            )
            .await?;
        client
            .batch_execute(
                "BEGIN;
                 UPDATE orders SET status = 'paid' WHERE id = (SELECT min(id) FROM orders WHERE status = 'new');
                 UPDATE orders SET status = 'shipped' WHERE id = (SELECT min(id) FROM orders WHERE status = 'paid' AND id < (SELECT max(id) FROM orders));
                 COMMIT;",
            )
            .await?;
        if tick.is_multiple_of(7) {
            client
                .execute(
                    "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)",
                    &[],
                )
                .await?;
        }
    }
}
