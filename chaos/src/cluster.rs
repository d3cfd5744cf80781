//! Real `tandem shard` and `tandem gateway` processes on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use proto::ShardId;
use tokio::process::{Child, Command};

use crate::services::{free_port, signal, wait_port};

/// Finds the `tandem` binary next to this one (same profile), building it when missing.
pub fn tandem_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/chaos, or target/<profile>/deps/chaos-… for tests.
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("tandem");
    if !bin.exists() {
        let release = dir.ends_with("release");
        let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
        cmd.args(["build", "-p", "tandem"]);
        if release {
            cmd.arg("--release");
        }
        eprintln!("chaos: building the tandem binary ({})", bin.display());
        let st = cmd.status().context("running cargo build -p tandem")?;
        if !st.success() || !bin.exists() {
            bail!("could not build {}", bin.display());
        }
    }
    Ok(bin)
}

/// One shard process's fixed identity (a restart keeps id and ports).
#[derive(Debug, Clone)]
pub struct ShardSpec {
    /// Id on the ring.
    pub id: ShardId,
    /// Link port.
    pub link: u16,
    /// Admin port.
    pub admin: u16,
}

/// A process the harness started.
pub struct Proc {
    child: Option<Child>,
    /// Paused with SIGSTOP.
    pub stopped: bool,
}

impl Proc {
    /// The pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether it runs.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.stopped {
                if let Some(pid) = c.id() {
                    let _ = signal(pid, "CONT").await;
                }
            }
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
        self.stopped = false;
    }

    async fn term(&mut self, timeout: Duration) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = signal(pid, "TERM").await;
            }
            if tokio::time::timeout(timeout, c.wait()).await.is_err() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }
}

/// The processes of one cluster.
pub struct Cluster {
    bin: PathBuf,
    logs: PathBuf,
    /// Cluster name (Redis namespace).
    pub name: String,
    pg_url: String,
    redis_url: String,
    /// Shard identities.
    pub shard_specs: Vec<ShardSpec>,
    shards: Vec<Proc>,
    /// Gateway ports.
    pub gateway_ports: Vec<u16>,
    gateways: Vec<Proc>,
    /// Lease length given to shards (ms).
    pub lease_ms: u64,
}

impl Cluster {
    /// Starts `shards` shards and `gateways` gateways; logs go to `logs`.
    pub async fn start(
        bin: &Path,
        logs: &Path,
        pg_url: &str,
        redis_url: &str,
        shards: usize,
        gateways: usize,
        lease_ms: u64,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(logs)?;
        // Migrations once, before several shards race to apply them.
        let st = Command::new(bin)
            .args(["migrate", "--database-url", pg_url])
            .stdout(Stdio::null())
            .status()
            .await?;
        if !st.success() {
            bail!("tandem migrate failed");
        }
        let mut c = Self {
            bin: bin.to_path_buf(),
            logs: logs.to_path_buf(),
            name: "chaos".into(),
            pg_url: pg_url.into(),
            redis_url: redis_url.into(),
            shard_specs: Vec::new(),
            shards: Vec::new(),
            gateway_ports: Vec::new(),
            gateways: Vec::new(),
            lease_ms,
        };
        for i in 0..shards {
            c.shard_specs.push(ShardSpec {
                id: ShardId::parse(&format!("s{i}")).context("shard id")?,
                link: free_port()?,
                admin: free_port()?,
            });
            c.shards.push(Proc {
                child: None,
                stopped: false,
            });
            c.start_shard(i).await?;
        }
        for _ in 0..gateways {
            c.gateway_ports.push(free_port()?);
            c.gateways.push(Proc {
                child: None,
                stopped: false,
            });
        }
        for i in 0..gateways {
            c.start_gateway(i).await?;
        }
        c.wait_ring(shards).await?;
        Ok(c)
    }

    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))?)
    }

    /// (Re)starts shard `i` with its fixed id and ports.
    pub async fn start_shard(&mut self, i: usize) -> anyhow::Result<()> {
        let s = self.shard_specs[i].clone();
        let log = self.log_file(s.id.as_str())?;
        let child = Command::new(&self.bin)
            .arg("shard")
            .args(["--id", s.id.as_str()])
            .args(["--link-listen", &format!("127.0.0.1:{}", s.link)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", s.admin)])
            .args(["--database-url", &self.pg_url])
            .args(["--redis-url", &self.redis_url])
            .args(["--cluster", &self.name])
            .args(["--lease-ms", &self.lease_ms.to_string()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting tandem shard")?;
        self.shards[i] = Proc {
            child: Some(child),
            stopped: false,
        };
        wait_port(s.link, Duration::from_secs(20)).await
    }

    /// (Re)starts gateway `i` on its fixed port.
    pub async fn start_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let port = self.gateway_ports[i];
        let log = self.log_file(&format!("gateway{i}"))?;
        let child = Command::new(&self.bin)
            .arg("gateway")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--redis-url", &self.redis_url])
            .args(["--cluster", &self.name])
            .arg("--allow-anonymous")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting tandem gateway")?;
        self.gateways[i] = Proc {
            child: Some(child),
            stopped: false,
        };
        wait_port(port, Duration::from_secs(20)).await
    }

    /// Waits until the ring has `n` members (as seen through `tandem ctl`).
    pub async fn wait_ring(&self, n: usize) -> anyhow::Result<()> {
        let m = router::membership::Membership::connect(&self.redis_url, &self.name).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(v) = m.sync().await {
                if v.ring.members().len() == n {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the ring never reached {n} members");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL shard `i`.
    pub async fn kill_shard(&mut self, i: usize) {
        self.shards[i].kill().await;
    }

    /// SIGSTOP shard `i`.
    pub async fn pause_shard(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.shards[i].pid().context("shard not running")?;
        signal(pid, "STOP").await?;
        self.shards[i].stopped = true;
        Ok(())
    }

    /// SIGCONT shard `i`.
    pub async fn resume_shard(&mut self, i: usize) -> anyhow::Result<()> {
        let pid = self.shards[i].pid().context("shard not running")?;
        signal(pid, "CONT").await?;
        self.shards[i].stopped = false;
        Ok(())
    }

    /// Whether shard `i` runs.
    pub fn shard_running(&mut self, i: usize) -> bool {
        self.shards[i].running()
    }

    /// SIGKILL gateway `i`.
    pub async fn kill_gateway(&mut self, i: usize) {
        self.gateways[i].kill().await;
    }

    /// Runs `tandem ctl ARGS…` against this cluster; returns stdout.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .arg("ctl")
            .args(["--redis-url", &self.redis_url, "--cluster", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "tandem ctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops everything (graceful first).
    pub async fn stop(&mut self) {
        for g in &mut self.gateways {
            g.kill().await;
        }
        for s in &mut self.shards {
            if s.stopped {
                s.kill().await;
            } else {
                s.term(Duration::from_secs(10)).await;
            }
        }
    }
}
