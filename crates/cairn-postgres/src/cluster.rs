//! A private PostgreSQL cluster: `initdb` in a temporary directory, started
//! on a free port of 127.0.0.1 (and a Unix socket in the same directory),
//! stopped and deleted on drop. Nothing assumes a server already running.
//!
//! The server binaries come from Debian's `postgresql` package
//! (`/usr/lib/postgresql/<version>/bin`; `CAIRN_PG_BIN` names another
//! directory). `initdb` refuses to run as root, so as root the cluster
//! belongs to the `postgres` user the package creates, and its commands run
//! through `runuser`. Authentication is `trust` on loopback only: the
//! cluster is for tests and benchmarks, never for data.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running private cluster; stopped and removed when dropped.
pub struct Cluster {
    bin: PathBuf,
    /// Holds the data directory (removed on drop).
    dir: tempfile::TempDir,
    port: u16,
    /// The user the server runs as, when it is not the current one.
    run_as: Option<String>,
}

impl Cluster {
    /// Creates and starts a cluster with its own settings added to
    /// `postgresql.conf` (`name = value` lines), and waits until it accepts
    /// connections.
    pub fn start(settings: &[(&str, &str)]) -> anyhow::Result<Cluster> {
        let bin = find_bin()?;
        let run_as = is_root().then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new().prefix("cairn-pg-").tempdir().context("a temporary directory")?;
        if let Some(user) = &run_as {
            let status = Command::new("chown").arg(user).arg(dir.path()).status().context("chown")?;
            if !status.success() {
                bail!(
                    "chown {user} {}: is Debian's postgresql package installed (it creates the user)?",
                    dir.path().display()
                );
            }
        }
        let data = dir.path().join("data");
        let mut initdb = command(&run_as, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        let port = free_port()?;
        let mut conf = String::from("\n# cairn's private cluster\nlisten_addresses = '127.0.0.1'\n");
        conf.push_str(&format!("port = {port}\nunix_socket_directories = '{}'\n", dir.path().display()));
        for (name, value) in settings {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).context("reading postgresql.conf")?;
        existing.push_str(&conf);
        // Written through the cluster's user's eyes: the file is theirs.
        std::fs::write(&conf_path, existing).context("writing postgresql.conf")?;
        let cluster = Cluster { bin, dir, port, run_as };
        let mut start = cluster.pg_ctl();
        start.arg("-l").arg(cluster.dir.path().join("log")).args(["-w", "-t", "60", "start"]);
        run(start, "pg_ctl start").with_context(|| cluster.log_tail())?;
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for the `postgres` superuser on `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL with `psql` on the `postgres` database (setup only).
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL with `psql` on `database` (setup only).
    pub fn psql_in(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let mut psql = command(&None, &self.bin.join("psql"));
        psql.args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", database, "-c", sql]);
        let output = psql.output().context("psql")?;
        if !output.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Restarts the server (`pg_ctl restart -m fast`): clients lose their
    /// connections, committed data stays.
    pub fn restart(&self) -> anyhow::Result<()> {
        let mut restart = self.pg_ctl();
        restart.arg("-l").arg(self.dir.path().join("log")).args(["-w", "-t", "60", "-m", "fast", "restart"]);
        run(restart, "pg_ctl restart").with_context(|| self.log_tail())?;
        self.wait_ready()
    }

    fn pg_ctl(&self) -> Command {
        let mut pg_ctl = command(&self.run_as, &self.bin.join("pg_ctl"));
        pg_ctl.arg("-D").arg(self.dir.path().join("data"));
        pg_ctl
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.psql("select 1").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL did not accept connections within 60 s\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = self.pg_ctl();
        stop.args(["-w", "-t", "30", "-m", "immediate", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// The server binaries' directory: `CAIRN_PG_BIN`, or the newest under
/// `/usr/lib/postgresql`.
fn find_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CAIRN_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: apt-get install postgresql (or set CAIRN_PG_BIN)")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}

/// `program` as `user` (through runuser) or as the current user.
fn command(user: &Option<String>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
        None => Command::new(program),
    }
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("{what} could not run"))?;
    if !output.status.success() {
        bail!("{what} failed: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_private_cluster_starts_answers_restarts_and_goes() {
        let cluster = Cluster::start(&[("fsync", "off")]).unwrap();
        assert_eq!(cluster.psql("select 40 + 2").unwrap().trim(), "42");
        cluster.psql("create table t (n int); insert into t values (7)").unwrap();
        cluster.restart().unwrap();
        assert_eq!(cluster.psql("select n from t").unwrap().trim(), "7");
        let dir = cluster.dir.path().to_path_buf();
        drop(cluster);
        assert!(!dir.exists(), "the cluster's directory is removed");
    }
}
