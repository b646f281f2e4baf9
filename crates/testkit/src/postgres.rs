//! A private PostgreSQL cluster for tests that stop, restart or fail over the database (the
//! machine's shared cluster must never be stopped: other tests use it at the same time).
//!
//! [`Cluster::start`] runs `initdb` into a temporary directory (as the `postgres` OS user when
//! the tests run as root: PostgreSQL refuses to run as root), on a free port of 127.0.0.1 with
//! its unix socket in the same directory, and creates the `postern` role (password `postern`,
//! SCRAM over TCP) and database. [`Cluster::replica_of`] makes a streaming standby of another
//! cluster (`pg_basebackup -R`). Dropping a cluster stops it and deletes its directory.
//!
//! Where the PostgreSQL binaries are not installed, [`Cluster::start`] says so loudly and
//! returns `None` (the test skips); under CI (`CI=true`) it panics instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The role and password tests connect with.
pub const USER: &str = "postern";
/// Its password.
pub const PASSWORD: &str = "pg-test-secret-7Rq";
/// The database tests use.
pub const DATABASE: &str = "postern";

/// A PostgreSQL cluster of this test's own.
pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server tools as this OS user (`postgres` when the tests run as root).
    run_as: Option<String>,
}

impl Cluster {
    /// A new primary cluster, started, with the `postern` role and database; `None` (after a
    /// loud message) when PostgreSQL is not installed outside CI.
    pub fn start() -> Option<Self> {
        let bin = binaries()?;
        let cluster = Self::empty(bin);
        let data = cluster.data();
        let pwfile = cluster.dir.path().join("superuser-password");
        std::fs::write(&pwfile, "postgres\n").expect("write the superuser password file");
        cluster.chown(&pwfile);
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--pwfile",
                path(&pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // Quick and small: a test cluster needs no durability against power loss.
        std::fs::write(
            data.join("postgresql.auto.conf"),
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\nmax_connections = 60\nwal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n",
        )
        .expect("write postgresql.auto.conf");
        cluster.start_again();
        cluster.psql_in(
            "postgres",
            &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"),
        );
        cluster.psql_in(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {USER}"),
        );
        Some(cluster)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started, read-only until
    /// [`Cluster::promote`].
    pub fn replica_of(primary: &Cluster) -> Self {
        let cluster = Self::empty(primary.bin.clone());
        cluster.run(
            "pg_basebackup",
            &[
                "-D",
                path(&cluster.data()),
                "-h",
                path(primary.dir.path()),
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                // Without it the backup waits for a spread checkpoint (a minute and more).
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        cluster.start_again();
        cluster
    }

    fn empty(bin: PathBuf) -> Self {
        let run_as = running_as_root().then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new()
            .prefix("postern-pg-")
            .tempdir()
            .expect("create a temporary directory for the cluster");
        let cluster = Self {
            bin,
            dir,
            port: free_port(),
            run_as,
        };
        cluster.chown(cluster.dir.path());
        cluster
    }

    /// The connection URL (TCP, password authentication).
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits until it is down.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", path(&self.data()), "-m", "fast", "-w", "stop"],
        );
    }

    /// Starts the server (after [`Cluster::stop`]) and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&self.data()),
                "-l",
                path(&log),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.wait_ready();
    }

    /// Stops and starts the server.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Promotes a standby to primary and waits until it takes writes.
    pub fn promote(&self) {
        self.run(
            "pg_ctl",
            &["-D", path(&self.data()), "-w", "-t", "60", "promote"],
        );
        let started = Instant::now();
        while self.psql("SELECT pg_is_in_recovery()").trim() != "f" {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the standby was not promoted within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Freezes the server and every backend (SIGSTOP), as a paused VM or a network path that
    /// silently drops packets looks to a client: connections stay open, nothing answers.
    pub fn freeze(&self) {
        assert!(self.signal("STOP"), "SIGSTOP to the postmaster failed");
    }

    /// Undoes [`Cluster::freeze`].
    pub fn thaw(&self) {
        assert!(self.signal("CONT"), "SIGCONT to the postmaster failed");
    }

    /// Sends `signal` to the postmaster and its children; whether the postmaster got it.
    fn signal(&self, signal: &str) -> bool {
        let Some(pid) = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|pid| Some(pid.lines().next()?.trim().to_owned()))
        else {
            return false;
        };
        let children = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &pid])
            .output()
            .expect("run ps");
        let children: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(&pid)
            .status()
            .expect("run kill");
        if !status.success() {
            return false;
        }
        // A backend may end between `ps` and `kill` (a client disconnected): that one needs no
        // signal, so the children are signalled one by one and a vanished one is not an error.
        for child in children {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(&child)
                .stderr(std::process::Stdio::null())
                .status();
        }
        true
    }

    /// Runs `sql` as the superuser in the `postern` database (over the unix socket); its
    /// unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in(DATABASE, sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        let out = self.run(
            "psql",
            &[
                "-h",
                path(self.dir.path()),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qtA",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", path(self.dir.path()), "-p"])
                .arg(self.port.to_string())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not accept connections within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let out = self
            .command(tool)
            .args(args)
            // pg_ctl's server inherits the working directory; root's may be unreadable.
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    fn chown(&self, target: &Path) {
        if let Some(user) = &self.run_as {
            let status = Command::new("chown")
                .arg(user)
                .arg(target)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {user} {}", target.display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A frozen server (a test that failed before thawing it) would not stop.
        // Never a panic here: a test that passed must not fail in its clean-up.
        self.signal("CONT");
        // Immediate: the directory goes next, nothing there needs to survive.
        let _ = self
            .command("pg_ctl")
            .args(["-D", path(&self.data()), "-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

/// The directory of `initdb`, `pg_ctl` and friends: `POSTERN_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`. `None` (with a loud message) when there is none outside CI.
fn binaries() -> Option<PathBuf> {
    let found = std::env::var_os("POSTERN_TEST_PG_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect();
            versions.sort();
            versions.pop().map(|(_, bin)| bin)
        })
        .filter(|bin| bin.join("initdb").exists());
    if found.is_none() {
        let message = "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or POSTERN_TEST_PG_BIN: install the postgresql package";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}");
        }
        eprintln!("SKIPPED: {message}");
    }
    found
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
