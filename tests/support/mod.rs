//! Shared test support: one scratch PostgreSQL cluster per test binary, shared by every test of
//! that binary whether they run as threads of one process (`cargo test`) or as one process per
//! test (`cargo nextest run`), and stopped and removed shortly after the last test process exits.
//!
//! Include it in an integration test with `mod support;` and call [`cluster()`].
//!
//! How the sharing works, per test binary and server (state dir
//! `<target>/<profile>/walwatch-test-pg/pg<major>-<hash of the server's bin dir>/<bin>`, override
//! with `WALWATCH_TEST_PG_STATE_DIR`; the server is the one `WALWATCH_PG_BIN` picks, see
//! `walwatch::scratch::find_bin_dir`):
//! - `lock`: an exclusive `flock` held while checking the state file, starting a cluster if there
//!   is no live one, writing the state file and taking the lease;
//! - `state`: `key=value` lines (root dir, port, bin dir, watchdog pid) of the running cluster;
//! - `lease`: every test process holds a *shared* `flock` on it for its whole life (the kernel
//!   drops it when the process exits, however it exits);
//! - a watchdog (`setsid sh -c ...`, started with the cluster, detached from the test's process
//!   group) polls the lease twice a second; once nobody has held it for 3 s it takes `lock`,
//!   checks the lease is still free (a test joining must hold `lock` to take the lease, so none
//!   can slip in), stops the server (`pg_ctl stop -m immediate`), removes its directory and the
//!   state file. Its output goes to `watchdog.log` in the state dir.
//! - A state file whose postmaster is dead (a test killed it, a reboot) is ignored and replaced;
//!   a live cluster whose watchdog died gets a new watchdog.
//! - A run against another server (the suite runs on PostgreSQL 15, 17 and 18, tests/run.sh) has
//!   its own state dir, so it never joins a cluster of another version; should two runs still
//!   meet in one state dir (`WALWATCH_TEST_PG_STATE_DIR`), a live cluster whose recorded `bin`
//!   is not this run's server is refused, never joined.
//!
//! Tests that need a cluster of their own (another `wal_level`, restarts, kills) use
//! [`own_cluster`] / `ScratchCluster::start` and must not stop or kill the shared one.

#![allow(dead_code, unused_imports)]

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use walwatch::scratch::{
    ClusterHandle, ScratchCluster, ScratchError, ScratchOptions, TEST_DATABASE, TEST_PASSWORD,
    TEST_USER,
};

/// The shared cluster of this test binary.
pub type SharedCluster = ClusterHandle;

/// How long the lease must stay free before the watchdog tears the cluster down.
const IDLE_POLLS: u32 = 6; // x 0.5 s

struct Shared {
    cluster: SharedCluster,
    /// Whether this process joined a cluster another process had started.
    joined: bool,
    state_dir: PathBuf,
    /// The shared flock on `lease`, held until the process exits.
    _lease: File,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The cluster shared by every test of this test binary: started by the first test process that
/// asks, joined by the others. Panics (with the server log) when it cannot be started.
pub fn cluster() -> &'static SharedCluster {
    &shared().cluster
}

/// True when this process joined a cluster started by another process.
pub fn cluster_was_joined() -> bool {
    shared().joined
}

/// The bin directory of the server this process's tests run against (`WALWATCH_PG_BIN`, else
/// what `walwatch::scratch::find_bin_dir` finds), canonical, once per process.
pub fn server_bin_dir() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = walwatch::scratch::find_bin_dir().ok()?;
        Some(fs::canonicalize(&dir).unwrap_or(dir))
    })
    .as_deref()
}

/// The server's major version from `postgres --version` ("postgres (PostgreSQL) 18.6", Debian:
/// "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"), e.g. 18.
pub fn server_major_version(bin: &Path) -> Option<u32> {
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_once("(PostgreSQL)")?.1.trim_start();
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Whether the server in `bin` was built with SSL, as tests/install-pg-matrix.sh decides it:
/// `pg_config --configure` lists `--with-openssl` (up to PostgreSQL 13) or `--with-ssl=openssl`
/// (14 on; PostgreSQL docs, "Installation from Source Code"); without a pg_config, whether
/// `postgres` links libssl. Debian's 15 and the PyPI 17 have SSL, the PyPI 18 has none.
pub fn server_build_has_ssl(bin: &Path) -> bool {
    let run = |program: PathBuf, arg: &Path| {
        Command::new(program)
            .arg(arg)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    match run(bin.join("pg_config"), Path::new("--configure")) {
        Some(conf) => conf.contains("--with-openssl") || conf.contains("--with-ssl=openssl"),
        None => run("ldd".into(), &bin.join("postgres")).is_some_and(|l| l.contains("libssl.so")),
    }
}

/// For a test that needs a server built with SSL: whether to run it. It runs when the server
/// has SSL. When it has none the test fails, saying so, unless `WALWATCH_PG_SSL=0` says that
/// this server has no SSL (tests/run.sh sets it for such a build, and leaves such tests out of
/// that run): then this prints that `test` is skipped and returns false. `WALWATCH_PG_SSL=0`
/// with a server that does have SSL fails too: the test would be skipped where it can run.
pub fn server_has_ssl_or_skip(test: &str) -> bool {
    let bin = server_bin_dir().expect("a PostgreSQL bin dir (WALWATCH_PG_BIN)");
    let declared = match std::env::var("WALWATCH_PG_SSL").as_deref() {
        Ok("0") => Some(false),
        Ok("1") => Some(true),
        Ok("") | Err(_) => None,
        Ok(other) => panic!("WALWATCH_PG_SSL={other}: expected 0 or 1"),
    };
    match (server_build_has_ssl(bin), declared) {
        (true, Some(false)) => panic!(
            "WALWATCH_PG_SSL=0, but the server in {} was built with SSL: {test} needs it and \
             would be skipped where it can run; unset WALWATCH_PG_SSL",
            bin.display()
        ),
        (true, _) => true,
        (false, Some(false)) => {
            eprintln!(
                "skipping {test}: the server in {} was built without SSL (WALWATCH_PG_SSL=0)",
                bin.display()
            );
            false
        }
        (false, _) => panic!(
            "{test} needs a server built with SSL, and the server in {} has none (its \
             pg_config --configure lists neither --with-openssl nor --with-ssl=openssl): run \
             it against a server with SSL (WALWATCH_PG_BIN), or set WALWATCH_PG_SSL=0 to skip it",
            bin.display()
        ),
    }
}

/// `pg<major>-<8 hex digits>`: which server a state dir belongs to. The hash (FNV-1a of the bin
/// dir's path) tells apart two builds of one major version.
fn server_key() -> String {
    let Some(bin) = server_bin_dir() else {
        // No server: starting the cluster fails and says so; the state dir does not matter.
        return "no-server".to_owned();
    };
    let mut hash: u32 = 0x811c_9dc5;
    for b in bin.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    match server_major_version(bin) {
        Some(major) => format!("pg{major}-{hash:08x}"),
        None => format!("pg-{hash:08x}"),
    }
}

/// The state directory of this test binary's shared cluster (for this process's server).
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WALWATCH_TEST_PG_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tests".into());
    // cargo names test binaries `<name>-<16 hex digits>`.
    let name = match stem.rsplit_once('-') {
        Some((n, h)) if h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) => n.to_owned(),
        _ => stem,
    };
    let exe_dir = exe.parent().expect("exe has a parent").to_path_buf();
    let base = if exe_dir.file_name().is_some_and(|n| n == "deps") {
        exe_dir.parent().map(Path::to_path_buf).unwrap_or(exe_dir)
    } else {
        exe_dir
    };
    base.join("walwatch-test-pg").join(server_key()).join(name)
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| start_or_join().unwrap_or_else(|e| panic!("shared test cluster: {e}")))
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a valid open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

struct State {
    root: PathBuf,
    port: u16,
    bin: PathBuf,
    watchdog_pid: u32,
}

fn read_state(path: &Path) -> Option<State> {
    let text = fs::read_to_string(path).ok()?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    Some(State {
        root: get("root")?.into(),
        port: get("port")?.parse().ok()?,
        bin: get("bin")?.into(),
        watchdog_pid: get("watchdog_pid")?.parse().ok()?,
    })
}

fn write_state(path: &Path, s: &State) {
    let tmp = path.with_extension("tmp");
    let text = format!(
        "root={}\nport={}\nbin={}\nwatchdog_pid={}\n",
        s.root.display(),
        s.port,
        s.bin.display(),
        s.watchdog_pid
    );
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

fn pg_isready(c: &ClusterHandle) -> bool {
    Command::new(c.bin("pg_isready"))
        .arg("-q")
        .arg("-h")
        .arg(c.socket_dir())
        .arg("-p")
        .arg(c.port().to_string())
        .args(["-t", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_or_join() -> Result<Shared, ScratchError> {
    let dir = state_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let lock = open_rw(&dir.join("lock"));
    flock(&lock, libc::LOCK_EX).expect("flock lock");
    let state_path = dir.join("state");

    let mut found = None;
    if let Some(st) = read_state(&state_path) {
        refuse_another_server(&dir, &st);
        let c = ClusterHandle::from_parts(st.root.clone(), st.bin.clone(), st.port);
        let alive = c
            .postmaster_pid()
            .is_some_and(walwatch::scratch::process_alive);
        if alive {
            // Running: it accepts connections, or will shortly (a crash restart).
            let ready = wait_for(|| pg_isready(&c));
            if !ready {
                panic!(
                    "shared test cluster at {} runs but does not accept connections\n{}",
                    c.root_dir().display(),
                    c.log_tail(40)
                );
            }
            found = Some((c, st));
        } else {
            // Stale: its postmaster is gone. Remove what is left; a new one replaces it.
            let _ = fs::remove_dir_all(&st.root);
            let _ = fs::remove_file(&state_path);
        }
    }

    let (cluster, joined) = match found {
        Some((c, mut st)) => {
            if !walwatch::scratch::process_alive(st.watchdog_pid) {
                st.watchdog_pid = spawn_watchdog(&dir, &c);
                write_state(&state_path, &st);
            }
            (c, true)
        }
        None => {
            // Prepared transactions for the golden workload (tests/golden/workload.sql).
            let opts = ScratchOptions {
                extra_conf: vec![("max_prepared_transactions".into(), "8".into())],
                ..ScratchOptions::default()
            };
            let c = ScratchCluster::start(opts)?.detach();
            let watchdog_pid = spawn_watchdog(&dir, &c);
            write_state(
                &state_path,
                &State {
                    root: c.root_dir().to_path_buf(),
                    port: c.port(),
                    bin: c.bin_dir().to_path_buf(),
                    watchdog_pid,
                },
            );
            (c, false)
        }
    };

    // Take the lease before releasing the lock: the watchdog only tears down while holding the
    // lock and seeing the lease free.
    let lease = open_rw(&dir.join("lease"));
    flock(&lease, libc::LOCK_SH).expect("flock lease");
    drop(lock);
    Ok(Shared {
        cluster,
        joined,
        state_dir: dir,
        _lease: lease,
    })
}

/// Panics when the state file records a live cluster of another server than this process's:
/// tests of one version must never run against a cluster of another.
fn refuse_another_server(dir: &Path, st: &State) {
    let Some(ours) = server_bin_dir() else { return };
    let theirs = fs::canonicalize(&st.bin).unwrap_or_else(|_| st.bin.clone());
    if theirs == ours {
        return;
    }
    let handle = ClusterHandle::from_parts(st.root.clone(), st.bin.clone(), st.port);
    if handle
        .postmaster_pid()
        .is_some_and(walwatch::scratch::process_alive)
    {
        panic!(
            "the shared test cluster in {} runs the server in {}, but this test runs against {} \
             (WALWATCH_PG_BIN): refusing to join a cluster of another server; give this run \
             its own WALWATCH_TEST_PG_STATE_DIR",
            dir.display(),
            theirs.display(),
            ours.display()
        );
    }
}

/// Polls `f` for up to 30 s; false when it never became true.
fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut delay = Duration::from_millis(10);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

const WATCHDOG: &str = r#"
cd / || exit 1
lock=$1 lease=$2 state=$3 root=$4 pgctl=$5 runas=$6
data="$root/data"
echo "$(date '+%F %T') watchdog $$ for $root"
free=0
while :; do
    sleep 0.5
    [ -d "$root" ] || { echo "$(date '+%F %T') $root is gone, exiting"; exit 0; }
    # No state dir (removed): nobody can hold or take the lease any more.
    if [ ! -e "$lease" ] || flock -n -x "$lease" true; then free=$((free + 1)); else free=0; fi
    if [ "$free" -ge "$IDLE_POLLS" ]; then
        [ -e "$lock" ] || touch "$lock" 2>/dev/null || lock=/dev/null
        exec 9>>"$lock"
        flock -x 9
        if [ ! -e "$lease" ] || flock -n -x "$lease" true; then
            echo "$(date '+%F %T') no test holds the lease: stopping $root"
            if [ -f "$data/postmaster.pid" ]; then
                if [ -n "$runas" ]; then
                    runuser -u "$runas" -- "$pgctl" -D "$data" -m immediate -w -t 30 stop
                else
                    "$pgctl" -D "$data" -m immediate -w -t 30 stop
                fi
            fi
            rm -rf "$root"
            if grep -qxF "root=$root" "$state" 2>/dev/null; then rm -f "$state"; fi
            exit 0
        fi
        exec 9>&-
        free=0
    fi
done
"#;

/// Starts the detached watchdog of cluster `c`; returns its pid.
fn spawn_watchdog(dir: &Path, c: &ClusterHandle) -> u32 {
    let log_path = dir.join("watchdog.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
    // The server runs as the owner of its data directory; pg_ctl refuses to run as root.
    // SAFETY: geteuid cannot fail.
    let runas = if unsafe { libc::geteuid() } == 0 {
        std::env::var("WALWATCH_PG_USER").unwrap_or_else(|_| "postgres".into())
    } else {
        String::new()
    };
    // `setsid`: its own session and process group, so that nextest killing a test's process
    // group (timeout, Ctrl-C) does not kill it; stdio to a file so nobody waits on our pipes.
    // Never waited for: it outlives this process (it holds on until our lease is released); if it
    // exits first it stays a zombie only until this test process exits.
    #[allow(clippy::zombie_processes)]
    let child = Command::new("setsid")
        .args(["sh", "-c", WATCHDOG, "walwatch-pg-watchdog"])
        .arg(dir.join("lock"))
        .arg(dir.join("lease"))
        .arg(dir.join("state"))
        .arg(c.root_dir())
        .arg(c.bin("pg_ctl"))
        .arg(runas)
        .env("IDLE_POLLS", IDLE_POLLS.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the cluster watchdog (setsid sh): {e}"));
    child.id()
}

/// A cluster of the test's own (not shared), e.g. `own_cluster(ScratchOptions::with_wal_level
/// ("replica"))`. Stopped and removed when dropped.
pub fn own_cluster(opts: ScratchOptions) -> ScratchCluster {
    ScratchCluster::start(opts).unwrap_or_else(|e| panic!("scratch cluster: {e}"))
}

/// A fresh identifier for tables, slots, publications, databases: `<prefix>_<pid>_<n>_<time>`,
/// lower-case `[a-z0-9_]`, starting with a letter, at most 40 characters.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut t = (nanos / 1000 % 36u128.pow(5)) as u64;
    let mut time = String::new();
    for _ in 0..5 {
        time.insert(0, char::from_digit((t % 36) as u32, 36).expect("digit"));
        t /= 36;
    }
    let suffix = format!("_{}_{}_{}", std::process::id(), n, time);
    let mut p: String = prefix
        .chars()
        .map(|ch| {
            let ch = ch.to_ascii_lowercase();
            if ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    if !p.starts_with(|ch: char| ch.is_ascii_lowercase()) {
        p.insert(0, 't');
    }
    p.truncate(40usize.saturating_sub(suffix.len()));
    p + &suffix
}

/// A superuser connection over the shared cluster's unix socket; the connection task is spawned
/// on the current tokio runtime.
pub async fn admin_client(db: &str) -> tokio_postgres::Client {
    // Starting the cluster blocks for a second or two: keep it off the runtime's threads.
    let c: &'static SharedCluster = tokio::task::spawn_blocking(cluster)
        .await
        .expect("starting the shared cluster");
    let dsn = c.admin_dsn(db);
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("admin connection to {dsn}: {e}"));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("admin connection error: {e}");
        }
    });
    client
}

/// Polls `f` with a short backoff until it returns `Some`, and returns that value; panics with
/// "timed out after Xs waiting for {what}" at the deadline.
pub fn wait_until<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_until_or(what, deadline, String::new, f)
}

/// [`wait_until`], whose timeout message ends with `context()` (a log, what was seen).
pub fn wait_until_or<T>(
    what: &str,
    deadline: Duration,
    context: impl FnOnce() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            let context = context();
            let sep = if context.is_empty() { "" } else { "\n" };
            panic!(
                "timed out after {:.1}s waiting for {what}{sep}{context}",
                deadline.as_secs_f64(),
            );
        }
        std::thread::sleep(delay.min(deadline - elapsed));
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// Flushes stdout (for child-process probes that print to their parent).
pub fn flush_stdout() {
    let _ = std::io::stdout().flush();
}

/// A TCP port of 127.0.0.1 nobody listens on (free when probed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("its address")
        .port()
}

/// A live process's peak resident set (VmHWM), in kB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// `seen` is `expected`, byte for byte; else a panic naming `what` and the first line that
/// differs, with both versions of it.
pub fn assert_same_lines(what: &str, expected: &[u8], seen: &[u8]) {
    if expected == seen {
        return;
    }
    let (e, s) = (
        String::from_utf8_lossy(expected),
        String::from_utf8_lossy(seen),
    );
    let (el, sl): (Vec<_>, Vec<_>) = (e.lines().collect(), s.lines().collect());
    let at = el
        .iter()
        .zip(&sl)
        .position(|(a, b)| a != b)
        .unwrap_or(el.len().min(sl.len()));
    panic!(
        "{what}: differs at line {} ({} lines expected, {} seen)\nexpected: {}\nseen:     {}",
        at + 1,
        el.len(),
        sl.len(),
        el.get(at).unwrap_or(&"(none)"),
        sl.get(at).unwrap_or(&"(none)")
    );
}

/// Runs `cmd` to its end, or kills it at `deadline` and fails with what it printed so far.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration, what: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let reader = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {deadline:?} (a hang); it printed:\n{}\n{}",
                String::from_utf8_lossy(&out.join().unwrap()),
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}
