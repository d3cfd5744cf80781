//! The harness's own PostgreSQL and Redis: private instances on free loopback ports, so that a run can
//! restart them (the faults) without touching the machine's shared services, and so that every run
//! starts from an empty record.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// A free TCP port on 127.0.0.1 (bound and released; good enough on a quiet loopback).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`, `TERM`, `QUIT`) to `pid`.
pub async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await?;
    if !st.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// A private `redis-server` (keeps nothing on disk: a restart is also a flush).
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let mut r = Self {
            port: free_port()?,
            child: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(10)).await
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (everything in it is lost).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        Ok(())
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn().await
    }
}

/// A private PostgreSQL cluster in a temporary folder (initdb'd per run).
pub struct Postgres {
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    child: Option<Child>,
}

fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").exists() {
            return Ok(p);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// initdb + start on a free port (as the `postgres` user when run as root: initdb refuses root).
    pub async fn start() -> anyhow::Result<Self> {
        let bin = pg_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("tandem-chaos-pg-")
            .tempdir()?;
        let as_postgres = is_root();
        if as_postgres {
            let st = std::process::Command::new("chown")
                .args(["postgres:postgres", &dir.path().to_string_lossy()])
                .status()?;
            if !st.success() {
                bail!("chown postgres {}", dir.path().display());
            }
        }
        let data = dir.path().join("data");
        let out = pg_command(as_postgres, &bin.join("initdb"))
            .args([
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut pg = Self {
            port: free_port()?,
            dir,
            bin,
            as_postgres,
            child: None,
        };
        pg.spawn().await?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let sock: &Path = self.dir.path();
        let child = pg_command(self.as_postgres, &self.bin.join("postgres"))
            .args([
                "-D",
                &self.data().to_string_lossy(),
                "-p",
                &self.port.to_string(),
                "-k",
                &sock.to_string_lossy(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(30)).await?;
        // Accepting TCP is not yet accepting queries (recovery after a crash).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("postgres did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint; the next start runs crash recovery), then a start.
    pub async fn restart(&mut self, down_for: Duration) -> anyhow::Result<()> {
        self.stop("QUIT").await?;
        tokio::time::sleep(down_for).await;
        self.spawn().await
    }

    async fn stop(&mut self, sig: &str) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                // The postmaster runs under runuser when we are root: signal the server itself.
                if self.as_postgres {
                    let _ = pkill_children(pid, sig).await;
                } else {
                    let _ = signal(pid, sig).await;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(20), c.wait()).await;
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        // Wait until the postmaster's pid file is gone (its backends have exited).
        let pid_file = self.data().join("postmaster.pid");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while pid_file.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("pkill")
                    .args(["-QUIT", "-P", &pid.to_string()])
                    .status();
            }
        }
    }
}

async fn pkill_children(parent: u32, sig: &str) -> anyhow::Result<()> {
    Command::new("pkill")
        .args([&format!("-{sig}"), "-P", &parent.to_string()])
        .status()
        .await?;
    Ok(())
}

fn pg_command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}
