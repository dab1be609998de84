//! A throwaway local PostgreSQL cluster for tests and `walwatch demo`.
//!
//! [`ScratchCluster::start`] runs `initdb` into a fresh temporary directory, configures the server
//! for logical replication on loopback only, starts it on a free TCP port of 127.0.0.1 and creates
//! the roles and the database the tests use. Everything is blocking `std::process` code: call it
//! from async code through `spawn_blocking`.
//!
//! The cluster listens on `127.0.0.1` and on a unix socket inside its temporary directory:
//!
//! | role              | attributes             | auth over TCP 127.0.0.1        |
//! |-------------------|------------------------|--------------------------------|
//! | `postgres`        | superuser              | unix socket only, `trust`      |
//! | `walwatch`        | LOGIN REPLICATION CREATEDB | `scram-sha-256`            |
//! | `walwatch_md5`    | LOGIN REPLICATION, md5-stored password | `md5`          |
//! | `walwatch_clear`  | LOGIN REPLICATION      | `password` (clear text)        |
//! | `walwatch_trust`  | LOGIN REPLICATION      | `trust`                        |
//! | `walwatch_norepl` | LOGIN (no REPLICATION) | `scram-sha-256`                |
//!
//! Every password is [`TEST_PASSWORD`] (`walwatch-test-password`): the cluster only listens on
//! loopback and lives as long as a test. The database `walwatch` (and every database made by
//! [`ClusterHandle::create_database`]) is owned by `walwatch`, and so is its `public` schema
//! (PostgreSQL 15 revoked `CREATE` on `public` from everybody else).
//!
//! `initdb`, `postgres` and `pg_ctl` refuse to run as root: when the current user is root they are
//! run as the `postgres` OS user (`runuser -u postgres --`, override the user with
//! `WALWATCH_PG_USER`), which owns the temporary directory. Binaries are taken from
//! `WALWATCH_PG_BIN` when set, else from the highest `/usr/lib/postgresql/<version>/bin`, else from
//! `pg_config --bindir`, else from the `PATH`.

pub use crate::pg::quote::{quote_ident, quote_literal};
use std::ffi::{CStr, CString, OsStr};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The password of every `walwatch*` role of a scratch cluster (a throwaway loopback cluster).
pub const TEST_PASSWORD: &str = "walwatch-test-password";
/// The login role tests connect as over TCP (SCRAM-SHA-256), owner of the `walwatch` database.
pub const TEST_USER: &str = "walwatch";
/// The database created at start, owned by [`TEST_USER`].
pub const TEST_DATABASE: &str = "walwatch";

/// How many times a start is retried with another port when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// How long `pg_ctl` may wait for the server to accept connections or to stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// How to configure a scratch cluster.
#[derive(Debug, Clone)]
pub struct ScratchOptions {
    /// `wal_level`: `"logical"` (default) or `"replica"`.
    pub wal_level: String,
    /// Extra `postgresql.conf` settings, written after the built-in ones (so they win). Values are
    /// written single-quoted, which PostgreSQL accepts for every type: pass `("work_mem", "64MB")`.
    pub extra_conf: Vec<(String, String)>,
    /// `fsync`, `synchronous_commit` and `full_page_writes`: off by default, for speed. A crash of
    /// the machine loses the cluster, which is thrown away anyway.
    pub fsync: bool,
}

impl Default for ScratchOptions {
    fn default() -> Self {
        ScratchOptions {
            wal_level: "logical".to_owned(),
            extra_conf: Vec::new(),
            fsync: false,
        }
    }
}

impl ScratchOptions {
    /// The defaults with another `wal_level` (e.g. `"replica"`).
    pub fn with_wal_level(wal_level: &str) -> Self {
        ScratchOptions {
            wal_level: wal_level.to_owned(),
            ..Default::default()
        }
    }
}

/// What went wrong while running a scratch cluster.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// The PostgreSQL server binaries (`initdb`, `pg_ctl`, `psql`) were not found.
    #[error(
        "PostgreSQL binaries not found ({0}); install PostgreSQL (Debian: `apt-get install postgresql`) or set WALWATCH_PG_BIN to its bin directory"
    )]
    BinNotFound(String),
    /// Running as root, but the unprivileged OS user to run the server as does not exist.
    #[error(
        "running as root, and the OS user `{0}` to run PostgreSQL as does not exist (initdb refuses root); install Debian's postgresql package, set WALWATCH_PG_USER, or run as a non-root user"
    )]
    NoServerUser(String),
    /// A file system or process-spawn operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A command (initdb, pg_ctl, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    /// The server did not come up; `log_tail` is the end of its log.
    #[error("PostgreSQL did not start: {reason}\n--- server log (last lines) ---\n{log_tail}")]
    Start { reason: String, log_tail: String },
    /// `psql` failed; `stderr` holds its error messages.
    #[error("psql on database `{db}` failed ({status}): {stderr}\n--- SQL ---\n{sql}")]
    Psql {
        db: String,
        status: String,
        stderr: String,
        sql: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ScratchError {
    let what = what.into();
    move |source| ScratchError::Io { what, source }
}

/// The OS user the server processes run as, when we are root.
#[derive(Debug, Clone)]
struct ServerUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// Looks the user up with `getpwnam_r`; `None` when it does not exist.
fn lookup_user(name: &str) -> Option<ServerUser> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain old data; getpwnam_r fills it and points its strings into `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the given sizes for the duration of the call.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some(ServerUser {
        name,
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `Some(user)` when the server binaries must run as another user (we are root), else `None`.
fn server_user() -> Result<Option<ServerUser>, ScratchError> {
    if !is_root() {
        return Ok(None);
    }
    let name = std::env::var("WALWATCH_PG_USER").unwrap_or_else(|_| "postgres".to_owned());
    lookup_user(&name)
        .map(Some)
        .ok_or(ScratchError::NoServerUser(name))
}

/// Finds the directory holding `initdb`, `pg_ctl` and `psql`.
pub fn find_bin_dir() -> Result<PathBuf, ScratchError> {
    let has_tools = |dir: &Path| {
        ["initdb", "pg_ctl", "psql"]
            .iter()
            .all(|t| dir.join(t).is_file())
    };
    if let Some(dir) = std::env::var_os("WALWATCH_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_tools(&dir) {
            Ok(dir)
        } else {
            Err(ScratchError::BinNotFound(format!(
                "WALWATCH_PG_BIN={} has no initdb, pg_ctl and psql",
                dir.display()
            )))
        };
    }
    // Debian layout: /usr/lib/postgresql/<major>/bin; take the highest major version.
    let mut best: Option<(u64, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name.to_str().and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if has_tools(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    if let Some((_, dir)) = best {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_tools(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                // Resolve symlinks (e.g. /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin).
                let real = fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| has_tools(d))
                    .unwrap_or(dir);
                return Ok(real);
            }
        }
    }
    Err(ScratchError::BinNotFound(
        "looked in WALWATCH_PG_BIN, /usr/lib/postgresql/*/bin, pg_config --bindir and PATH".into(),
    ))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn run(mut cmd: Command) -> Result<Output, ScratchError> {
    let what = describe(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("cannot run `{what}`")))?;
    if out.status.success() {
        Ok(out)
    } else {
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        Err(ScratchError::Command {
            command: what,
            status: out.status.to_string(),
            output,
        })
    }
}

/// Quotes a libpq key=value connection-string value.
fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Percent-encodes a URL path or userinfo component.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The last `lines` lines of a file read from byte `from` on (the log of one start attempt).
fn file_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    if all.is_empty() {
        format!("(no server log at {})", path.display())
    } else {
        all[start..].join("\n")
    }
}

/// Asks the kernel for a free TCP port on 127.0.0.1. The port is released again before the server
/// binds it, so another process may take it meanwhile: [`ScratchCluster::start`] retries then.
fn free_port() -> Result<u16, ScratchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("cannot bind 127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io_err("local_addr"))?.port())
}

/// Where a cluster lives and how to reach it, without owning it: it does not stop the server when
/// dropped. [`ScratchCluster`] owns one; the shared test cluster hands out a `&'static` one.
///
/// Layout under `root_dir`: `data/` (PGDATA), `s/` (the unix socket directory), `server.log`.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    root_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    bin_dir: PathBuf,
    port: u16,
}

impl ClusterHandle {
    /// A handle on a cluster laid out by [`ScratchCluster::start`] under `root_dir`.
    pub fn from_parts(root_dir: PathBuf, bin_dir: PathBuf, port: u16) -> Self {
        ClusterHandle {
            data_dir: root_dir.join("data"),
            socket_dir: root_dir.join("s"),
            log_file: root_dir.join("server.log"),
            root_dir,
            bin_dir,
            port,
        }
    }

    /// The TCP port on 127.0.0.1 (also the unix socket's port number).
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The temporary directory holding everything of this cluster.
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }
    /// The directory holding the unix socket `.s.PGSQL.<port>`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }
    /// PGDATA.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// The server log (`pg_ctl -l`).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }
    /// The PostgreSQL bin directory (`psql`, `pg_recvlogical`, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }
    /// The path of one PostgreSQL program, e.g. `bin("pg_recvlogical")`.
    pub fn bin(&self, program: &str) -> PathBuf {
        self.bin_dir.join(program)
    }

    /// `postgres://walwatch:PASSWORD@127.0.0.1:PORT/DB`: TCP, SCRAM-SHA-256, role `walwatch`.
    pub fn dsn(&self, dbname: &str) -> String {
        self.dsn_for(TEST_USER, dbname)
    }

    /// Like [`dsn`](Self::dsn) for another of the test roles (`walwatch_md5`, `walwatch_clear`,
    /// `walwatch_trust`, `walwatch_norepl`), all with the password [`TEST_PASSWORD`].
    pub fn dsn_for(&self, user: &str, dbname: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}",
            percent_encode(user),
            percent_encode(TEST_PASSWORD),
            self.port,
            percent_encode(dbname)
        )
    }

    /// `host=<socket dir> port=PORT user=postgres dbname=DB`: the superuser over the unix socket
    /// (trust). Understood by libpq and tokio-postgres.
    pub fn admin_dsn(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={}",
            quote_conninfo(&self.socket_dir().to_string_lossy()),
            self.port,
            quote_conninfo(dbname)
        )
    }

    /// Runs `sql` through `psql -v ON_ERROR_STOP=1 -X -q -At` as the superuser over the socket,
    /// fed on stdin (so statements run one by one, each in its own transaction unless the script
    /// says `BEGIN`). Returns stdout without its final newline; on failure the error holds stderr.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ScratchError> {
        let mut cmd = Command::new(self.bin("psql"));
        cmd.args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-At"])
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", dbname, "-f", "-"])
            .env("PGCLIENTENCODING", "UTF8")
            .env("PGAPPNAME", "walwatch-scratch")
            .env("LC_MESSAGES", "C")
            .env_remove("LC_ALL")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(io_err("cannot run psql"))?;
        // Write from a thread so a large output cannot deadlock against a large script.
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let script = sql.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(io_err("cannot wait for psql"))?;
        let write_result = writer.join().unwrap_or(Ok(()));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(ScratchError::Psql {
                db: dbname.to_owned(),
                status: out.status.to_string(),
                stderr,
                sql: sql.to_owned(),
            });
        }
        write_result.map_err(io_err("cannot write the script to psql"))?;
        let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Creates database `name` owned by `walwatch`, and gives `walwatch` its `public` schema.
    pub fn create_database(&self, name: &str) -> Result<(), ScratchError> {
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {} OWNER {};",
                quote_ident(name),
                quote_ident(TEST_USER)
            ),
        )?;
        self.psql(
            name,
            &format!("ALTER SCHEMA public OWNER TO {};", quote_ident(TEST_USER)),
        )?;
        Ok(())
    }

    /// The postmaster's pid from `postmaster.pid`, when that file exists.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(self.log_file(), 0, lines)
    }

    /// `pg_ctl -D <data>` with `args`, run as the server's OS user.
    fn pg_ctl<I, S>(&self, user: Option<&ServerUser>, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = server_command(user, &self.bin("pg_ctl"), &self.root_dir);
        cmd.arg("-D").arg(self.data_dir()).args(args);
        cmd
    }

    /// Restarts the server (`pg_ctl restart -m fast`), waiting until it accepts connections again.
    ///
    /// After a `kill -9` of the postmaster use [`ScratchCluster::start_server_again`] instead.
    pub fn restart(&self) -> Result<(), ScratchError> {
        let user = server_user()?;
        let mut cmd = self.pg_ctl(
            user.as_ref(),
            ["-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", "fast"],
        );
        cmd.arg("-l").arg(self.log_file()).arg("restart");
        run(cmd).map(drop)
    }

    /// Stops the server the way a crash would (`pg_ctl stop -m immediate`: no shutdown
    /// checkpoint, every connection cut). Start it with [`start_server_again`](Self::start_server_again).
    pub fn stop_immediately(&self) -> Result<(), ScratchError> {
        let user = server_user()?;
        let mut cmd = self.pg_ctl(
            user.as_ref(),
            ["-w", "-t", PG_CTL_TIMEOUT_SECS, "-m", "immediate"],
        );
        cmd.arg("stop");
        run(cmd).map(drop)
    }

    /// Starts the server of this (stopped or crashed) cluster again, waiting for it to accept
    /// connections. After a `kill -9` the dead postmaster can linger about a second, during which
    /// `pg_ctl` refuses to start: this waits (up to 10 s) until its process has gone.
    pub fn start_server_again(&self) -> Result<(), ScratchError> {
        if let Some(pid) = self.postmaster_pid() {
            // The postmaster checks the old pid with kill(pid, 0), which a zombie passes: wait
            // until the process is reaped, not merely dead.
            let deadline = Instant::now() + Duration::from_secs(10);
            while process_exists(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let user = server_user()?;
        let log_len = fs::metadata(self.log_file()).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.pg_ctl(user.as_ref(), ["-w", "-t", PG_CTL_TIMEOUT_SECS]);
        cmd.arg("-l").arg(self.log_file()).arg("start");
        run(cmd).map(drop).map_err(|e| ScratchError::Start {
            reason: e.to_string(),
            log_tail: file_tail(self.log_file(), log_len, 40),
        })
    }

    /// Stops the server: `pg_ctl stop -m fast`, then `-m immediate` if that did not work. Not
    /// running already counts as success.
    fn stop_server(&self) -> Result<(), ScratchError> {
        if !self.data_dir().join("postmaster.pid").exists() {
            return Ok(());
        }
        let user = server_user()?;
        let fast = run(self.pg_ctl(user.as_ref(), ["-w", "-t", "30", "-m", "fast", "stop"]));
        if fast.is_ok() || !self.data_dir().join("postmaster.pid").exists() {
            return Ok(());
        }
        let immediate =
            run(self.pg_ctl(user.as_ref(), ["-w", "-t", "30", "-m", "immediate", "stop"]));
        if immediate.is_ok() || !self.data_dir().join("postmaster.pid").exists() {
            return Ok(());
        }
        // The postmaster may be dead with its pid file left behind (kill -9).
        match self.postmaster_pid() {
            Some(pid) if process_alive(pid) => immediate.map(drop),
            _ => Ok(()),
        }
    }
}

/// True when `pid` exists and is not a zombie (a killed postmaster lingers as one until reaped).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// True while `pid` exists at all, zombies included (what `kill(pid, 0)` sees).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A command for a server program, run as `user` (through `runuser`) when we are root, with `dir`
/// as its working directory (the server user may not be able to enter ours).
fn server_command(user: Option<&ServerUser>, program: &Path, dir: &Path) -> Command {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.arg("-u").arg(&u.name).arg("--").arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.current_dir(dir)
        .env("LC_MESSAGES", "C")
        .env_remove("LC_ALL")
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST");
    cmd
}

/// A running throwaway cluster that it owns: [`stop`](Self::stop) (or drop) stops the server and
/// removes its directory.
#[derive(Debug)]
pub struct ScratchCluster {
    handle: ClusterHandle,
    dir: Option<tempfile::TempDir>,
}

impl ScratchCluster {
    /// Creates, configures and starts a cluster, then creates the test roles and database.
    pub fn start(opts: ScratchOptions) -> Result<ScratchCluster, ScratchError> {
        let started = Instant::now();
        let bin_dir = find_bin_dir()?;
        let user = server_user()?;

        // Short base path: the socket path must stay under ~100 bytes. As root, /tmp is the place
        // the server user can surely reach.
        let env_tmp = std::env::temp_dir();
        let base = if user.is_some() || env_tmp.as_os_str().len() > 40 {
            PathBuf::from("/tmp")
        } else {
            env_tmp
        };
        let dir = tempfile::Builder::new()
            .prefix("walwatch-pg-")
            .tempdir_in(&base)
            .map_err(io_err(format!(
                "cannot create a temporary directory in {}",
                base.display()
            )))?;
        let root = dir.path().to_path_buf();
        // From here on, `cluster` owns the directory: an error return removes it (Drop).
        let mut cluster = ScratchCluster {
            handle: ClusterHandle::from_parts(root.clone(), bin_dir, 0),
            dir: Some(dir),
        };
        let socket_dir = cluster.handle.socket_dir().to_path_buf();
        fs::create_dir(&socket_dir).map_err(io_err(format!("mkdir {}", socket_dir.display())))?;
        for d in [&root, &socket_dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .map_err(io_err(format!("chmod {}", d.display())))?;
            if let Some(u) = &user {
                std::os::unix::fs::chown(d, Some(u.uid), Some(u.gid)).map_err(io_err(format!(
                    "chown {} to {}",
                    d.display(),
                    u.name
                )))?;
            }
        }

        cluster.initdb(user.as_ref(), &opts)?;
        cluster.start_on_free_port(user.as_ref())?;
        cluster.create_roles()?;
        tracing::debug!(
            port = cluster.port(),
            dir = %root.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scratch PostgreSQL cluster started"
        );
        Ok(cluster)
    }

    fn initdb(&self, user: Option<&ServerUser>, opts: &ScratchOptions) -> Result<(), ScratchError> {
        let h = &self.handle;
        let mut cmd = server_command(user, &h.bin("initdb"), h.root_dir());
        cmd.arg("-D").arg(h.data_dir()).args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        if !opts.fsync {
            cmd.arg("--no-sync");
        }
        run(cmd)?;

        let data = h.data_dir();
        let off_on = |b: bool| if b { "on" } else { "off" };
        let mut conf = String::from("# written by walwatch::scratch\n");
        let mut set = |k: &str, v: &str| {
            let _ = writeln!(conf, "{k} = {}", quote_literal(v));
        };
        set("listen_addresses", "127.0.0.1");
        set("unix_socket_directories", &h.socket_dir().to_string_lossy());
        set("wal_level", &opts.wal_level);
        set("max_replication_slots", "64");
        set("max_wal_senders", "64");
        set("max_connections", "200");
        set("fsync", off_on(opts.fsync));
        set("synchronous_commit", off_on(opts.fsync));
        set("full_page_writes", off_on(opts.fsync));
        set("logging_collector", "off");
        for (k, v) in &opts.extra_conf {
            set(k, v);
        }
        // The port lives in its own include file, rewritten on each start attempt.
        conf.push_str("include 'walwatch_port.conf'\n");
        let conf_path = data.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .map_err(io_err(format!("open {}", conf_path.display())))?;
        f.write_all(conf.as_bytes())
            .map_err(io_err(format!("write {}", conf_path.display())))?;

        // Per-user lines for the auth tests come before the generic ones (first match wins).
        let hba = "\
# written by walwatch::scratch (throwaway loopback cluster)
local   all                  all                          trust
local   replication          all                          trust
host    all,replication      walwatch_md5     127.0.0.1/32  md5
host    all,replication      walwatch_clear   127.0.0.1/32  password
host    all,replication      walwatch_trust   127.0.0.1/32  trust
host    all                  all              127.0.0.1/32  scram-sha-256
host    replication          all              127.0.0.1/32  scram-sha-256
";
        let hba_path = data.join("pg_hba.conf");
        fs::write(&hba_path, hba).map_err(io_err(format!("write {}", hba_path.display())))?;
        Ok(())
    }

    fn start_on_free_port(&mut self, user: Option<&ServerUser>) -> Result<(), ScratchError> {
        let log = self.handle.log_file().to_path_buf();
        let port_conf = self.handle.data_dir().join("walwatch_port.conf");
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            self.handle.port = port;
            fs::write(&port_conf, format!("port = {port}\n"))
                .map_err(io_err(format!("write {}", port_conf.display())))?;
            if let Some(u) = user {
                let _ = std::os::unix::fs::chown(&port_conf, Some(u.uid), Some(u.gid));
            }
            let log_len = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            // `pg_ctl -w` waits (up to -t seconds) until the server accepts connections, and
            // returns early when the postmaster exits.
            let mut cmd = self.handle.pg_ctl(user, ["-w", "-t", PG_CTL_TIMEOUT_SECS]);
            cmd.arg("-l").arg(&log).arg("start");
            match run(cmd) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let tail = file_tail(&log, log_len, 40);
                    let port_taken = tail.contains("Address already in use");
                    last_err = Some(ScratchError::Start {
                        reason: e.to_string(),
                        log_tail: tail,
                    });
                    if !port_taken {
                        break;
                    }
                    tracing::debug!(port, "port taken meanwhile, retrying with another");
                    // pg_ctl gave up; make sure no half-started postmaster remains.
                    let _ = self.handle.stop_server();
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    fn create_roles(&self) -> Result<(), ScratchError> {
        let pw = quote_literal(TEST_PASSWORD);
        let sql = format!(
            "SET password_encryption = 'scram-sha-256';
CREATE ROLE walwatch LOGIN REPLICATION CREATEDB PASSWORD {pw};
CREATE ROLE walwatch_clear LOGIN REPLICATION PASSWORD {pw};
CREATE ROLE walwatch_trust LOGIN REPLICATION PASSWORD {pw};
CREATE ROLE walwatch_norepl LOGIN PASSWORD {pw};
SET password_encryption = 'md5';
CREATE ROLE walwatch_md5 LOGIN REPLICATION PASSWORD {pw};
"
        );
        self.handle.psql("postgres", &sql)?;
        self.handle.create_database(TEST_DATABASE)
    }

    /// The handle (paths, DSNs, psql) of this cluster.
    pub fn handle(&self) -> &ClusterHandle {
        &self.handle
    }
    /// See [`ClusterHandle::port`].
    pub fn port(&self) -> u16 {
        self.handle.port
    }
    /// The directory holding the unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.handle.socket_dir()
    }
    /// PGDATA.
    pub fn data_dir(&self) -> &Path {
        self.handle.data_dir()
    }
    /// The PostgreSQL bin directory.
    pub fn bin_dir(&self) -> &Path {
        self.handle.bin_dir()
    }
    /// See [`ClusterHandle::dsn`].
    pub fn dsn(&self, dbname: &str) -> String {
        self.handle.dsn(dbname)
    }
    /// See [`ClusterHandle::admin_dsn`].
    pub fn admin_dsn(&self, dbname: &str) -> String {
        self.handle.admin_dsn(dbname)
    }
    /// See [`ClusterHandle::create_database`].
    pub fn create_database(&self, name: &str) -> Result<(), ScratchError> {
        self.handle.create_database(name)
    }
    /// See [`ClusterHandle::psql`].
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ScratchError> {
        self.handle.psql(dbname, sql)
    }
    /// See [`ClusterHandle::start_server_again`].
    pub fn start_server_again(&self) -> Result<(), ScratchError> {
        self.handle.start_server_again()
    }

    /// Stops the server (`pg_ctl stop -m fast`, `-m immediate` as a fallback) and removes the
    /// temporary directory. Dropping the cluster does the same, ignoring errors.
    pub fn stop(mut self) -> Result<(), ScratchError> {
        self.shutdown()
    }

    /// Leaves the server running and its directory on disk, and returns its handle: the caller now
    /// owns the cleanup (the shared test cluster hands it to a watchdog).
    pub fn detach(mut self) -> ClusterHandle {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.handle.clone()
    }

    fn shutdown(&mut self) -> Result<(), ScratchError> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let stopped = self.handle.stop_server();
        let removed = dir
            .close()
            .map_err(io_err(format!("remove {}", self.handle.root_dir.display())));
        stopped.and(removed)
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("stopping scratch cluster: {e}");
        }
    }
}
