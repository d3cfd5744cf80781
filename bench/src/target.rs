//! The servers under test: Tandem (started from its release binary, durable on PostgreSQL + Redis),
//! the peers people run today (`@hocuspocus/server`, `@y/websocket-server`, installed by npm into
//! `bench/peers/node_modules`), or any running server given by URL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::wire::Dialect;

/// Which server a run drives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Tandem,
    Hocuspocus,
    YWebsocketServer,
    /// `socket.io` 4.8 chat server (chat-fanout only).
    SocketIo,
    /// Janus 1.1's VideoRoom SFU (Debian package `janus`; call only).
    Janus,
    /// Already running: `ws://IP:PORT/prefix` (y-websocket dialect, document name appended).
    External(String),
}

impl Kind {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "tandem" => Kind::Tandem,
            "hocuspocus" => Kind::Hocuspocus,
            "y-websocket-server" | "y-websocket" => Kind::YWebsocketServer,
            "socketio" | "socket.io" => Kind::SocketIo,
            "janus" => Kind::Janus,
            s if s.starts_with("ws://") => Kind::External(s.to_string()),
            other => bail!(
                "unknown target {other:?}: expected tandem, hocuspocus, y-websocket-server, socketio, janus or a ws:// URL"
            ),
        })
    }

    pub fn name(&self) -> String {
        match self {
            Kind::Tandem => "tandem".into(),
            Kind::Hocuspocus => "hocuspocus".into(),
            Kind::YWebsocketServer => "y-websocket-server".into(),
            Kind::SocketIo => "socketio".into(),
            Kind::Janus => "janus".into(),
            Kind::External(u) => u.clone(),
        }
    }

    /// How the target keeps documents: printed in every report so comparisons stay honest.
    pub fn persistence(&self, opts: &TargetOpts) -> String {
        match self {
            Kind::Tandem => match opts.tandem_store.as_str() {
                "sqlite" => "Tandem, embedded SQLite (WAL): every update committed before anyone sees it".into(),
                _ => "Tandem durable: every update committed to PostgreSQL (synchronous_commit=on, group commit) before anyone sees it, then published to Redis Streams".into(),
            },
            Kind::Hocuspocus => "@hocuspocus/server 4.7, no persistence extension: documents in memory only (its Database extension would store a snapshot after a 2 s debounce)".into(),
            Kind::YWebsocketServer => "@y/websocket-server 0.1.1 without YPERSISTENCE: documents in memory only".into(),
            Kind::SocketIo => "socket.io 4.8.4 chat server (bench/peers/socketio.mjs), in-memory adapter: messages are never stored, only relayed".into(),
            Kind::Janus => "Janus 1.1 VideoRoom (Debian package), HTTP API on loopback, ICE-lite on lo: relays media, stores nothing (the call's events are not recorded anywhere)".into(),
            Kind::External(_) => "external server: unknown".into(),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Kind::Hocuspocus => Dialect::Hocuspocus,
            _ => Dialect::YWebsocket,
        }
    }
}

/// How targets are started.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetOpts {
    /// The `tandem` binary [default: next to this `bench` binary, else `tandem` on PATH].
    pub tandem_bin: Option<PathBuf>,
    /// `postgres` (default) or `sqlite`.
    pub tandem_store: String,
    pub database_url: String,
    pub redis_url: String,
    /// Folder holding the peers' package.json (npm installs into its node_modules).
    pub peers_dir: PathBuf,
    /// Extra arguments for `tandem dev`.
    pub tandem_args: Vec<String>,
}

impl Default for TargetOpts {
    fn default() -> Self {
        Self {
            tandem_bin: None,
            tandem_store: "postgres".into(),
            database_url: "postgres://root@127.0.0.1:5432/test".into(),
            redis_url: "redis://127.0.0.1:6379/13".into(),
            peers_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peers")),
            tandem_args: Vec::new(),
        }
    }
}

/// A started (or external) server.
pub struct Target {
    pub kind: Kind,
    /// `ws://127.0.0.1:PORT`
    pub base: String,
    /// How it keeps documents ([`Kind::persistence`]), recorded in every outcome measured on it.
    pub persistence: String,
    pub pid: Option<u32>,
    child: Option<Child>,
    _data: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    use std::path::{Path, PathBuf};

    /// A folder removed on drop (the data folder of a `tandem dev` under test).
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(prefix: &str) -> std::io::Result<Self> {
            let p =
                std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&p)?;
            Ok(Self(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn tandem_bin(opts: &TargetOpts) -> PathBuf {
    if let Some(b) = &opts.tandem_bin {
        return b.clone();
    }
    if let Ok(me) = std::env::current_exe() {
        let sib = me.with_file_name("tandem");
        if sib.exists() {
            return sib;
        }
    }
    PathBuf::from("tandem")
}

/// Installs the peers with `npm ci` if their node_modules is missing.
pub async fn ensure_peers(dir: &Path) -> anyhow::Result<()> {
    if dir.join("node_modules/@hocuspocus/server").exists()
        && dir.join("node_modules/@y/websocket-server").exists()
        && dir.join("node_modules/socket.io").exists()
    {
        return Ok(());
    }
    eprintln!(
        "bench: installing the peer servers with npm into {}",
        dir.display()
    );
    let st = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .await
        .context("running npm (Node.js 20 and npm are needed for the peer servers)")?;
    if !st.success() {
        bail!("npm ci in {} failed: {st}", dir.display());
    }
    Ok(())
}

impl Target {
    /// Starts `kind` on a free loopback port and waits until it listens.
    pub async fn start(kind: &Kind, opts: &TargetOpts) -> anyhow::Result<Target> {
        if let Kind::External(url) = kind {
            return Ok(Target {
                kind: kind.clone(),
                base: url.trim_end_matches('/').to_string(),
                persistence: kind.persistence(opts),
                pid: None,
                child: None,
                _data: None,
            });
        }
        if matches!(
            kind,
            Kind::Hocuspocus | Kind::YWebsocketServer | Kind::SocketIo
        ) {
            ensure_peers(&opts.peers_dir).await?;
        }
        if *kind == Kind::Janus {
            return start_janus().await;
        }
        let port = free_port()?;
        let data = if *kind == Kind::Tandem {
            Some(tempfile_dir::TempDir::new("tandem-bench")?)
        } else {
            None
        };
        let child = launch(kind, opts, port, data.as_ref().map(|d| d.path())).await?;
        Ok(Target {
            kind: kind.clone(),
            base: format!("ws://127.0.0.1:{port}"),
            persistence: kind.persistence(opts),
            pid: child.id(),
            child: Some(child),
            _data: data,
        })
    }

    /// Stops the server and starts it again on the same port with the same data.
    pub async fn restart(&mut self, opts: &TargetOpts) -> anyhow::Result<()> {
        let Some(child) = self.child.take() else {
            bail!("an external target cannot be restarted");
        };
        stop_child(child).await;
        let port: u16 = self
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("bad base URL {}", self.base))?;
        let child = launch(
            &self.kind,
            opts,
            port,
            self._data.as_ref().map(|d| d.path()),
        )
        .await?;
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    /// The URL a y-websocket-dialect client opens for `doc` (Hocuspocus: the shared endpoint).
    pub fn url_for(&self, doc: &str) -> String {
        match self.kind {
            Kind::Tandem => format!("{}/doc/{doc}", self.base),
            Kind::Hocuspocus => format!("{}/", self.base),
            Kind::YWebsocketServer | Kind::SocketIo | Kind::Janus | Kind::External(_) => {
                format!("{}/{doc}", self.base)
            }
        }
    }

    /// The server's `/metrics` text (Tandem only).
    pub async fn metrics(&self) -> Option<String> {
        if self.kind != Kind::Tandem {
            return None;
        }
        let addr = self.base.strip_prefix("ws://")?;
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    }

    /// Stops the server: SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child).await;
        }
    }
}

async fn stop_child(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Spawns the server process and waits for its "listening on" line.
async fn launch(
    kind: &Kind,
    opts: &TargetOpts,
    port: u16,
    data: Option<&Path>,
) -> anyhow::Result<Child> {
    // Every target gets the machine's full open-file limit (the soft limit may be lower).
    let mut cmd = Command::new("sh");
    let script = r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@""#;
    cmd.arg("-c").arg(script).arg("sh");
    match kind {
        Kind::Tandem => {
            cmd.arg(tandem_bin(opts))
                .arg("dev")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                // The harness's editors send edits and awareness at the offered rate; the
                // per-socket flood guard must not be what is measured.
                .arg("--max-messages-per-sec")
                .arg("0");
            if let Some(d) = data {
                cmd.arg("--data").arg(d);
            }
            match opts.tandem_store.as_str() {
                "postgres" => {
                    cmd.arg("--database-url")
                        .arg(&opts.database_url)
                        .arg("--redis-url")
                        .arg(&opts.redis_url);
                }
                "sqlite" => {}
                other => bail!("--tandem-store {other}: expected postgres or sqlite"),
            }
            cmd.args(&opts.tandem_args);
            cmd.env("RUST_LOG", "warn");
        }
        Kind::Hocuspocus | Kind::YWebsocketServer | Kind::SocketIo => {
            let script = match kind {
                Kind::Hocuspocus => "hocuspocus.mjs",
                Kind::SocketIo => "socketio.mjs",
                _ => "y-websocket-server.mjs",
            };
            cmd.arg("node")
                .arg(opts.peers_dir.join(script))
                .env("PORT", port.to_string())
                .env("HOST", "127.0.0.1")
                .env_remove("YPERSISTENCE");
        }
        Kind::External(_) | Kind::Janus => bail!("{} is not started this way", kind.name()),
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", kind.name()))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let ready = async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("listening on") {
                return anyhow::Ok(());
            }
        }
        Err(anyhow!("{} exited before listening", kind.name()))
    };
    tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .map_err(|_| anyhow!("{} did not start listening within 60 s", kind.name()))??;
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(child)
}

/// Janus's configuration for a run: only the VideoRoom plugin and the HTTP transport, on loopback
/// (HTTP on `port`, ICE-lite on `lo`, RTP in 30000–39999, no STUN).
fn janus_config(dir: &Path, port: u16) -> std::io::Result<()> {
    let lib = "/usr/lib/x86_64-linux-gnu/janus";
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            r#"general: {{
	configs_folder = "{cfg}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 2
}}
media: {{
	rtp_port_range = "30000-39999"
}}
nat: {{
	ice_lite = true
	ice_enforce_list = "127.0.0.1"
}}
plugins: {{
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}}
transports: {{
	disable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so"
}}
events: {{
	broadcast = false
}}
"#,
            cfg = dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            r#"general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	port = {port}
	ip = "127.0.0.1"
	https = false
}}
admin: {{
	admin_http = false
}}
"#
        ),
    )?;
    std::fs::write(
        dir.join("janus.plugin.videoroom.jcfg"),
        "general: {
}
",
    )
}

/// Starts Janus (installing Debian's `janus` package when it is missing) and waits for its API.
async fn start_janus() -> anyhow::Result<Target> {
    if Command::new("janus")
        .arg("--version")
        .output()
        .await
        .is_err()
    {
        eprintln!("bench: installing Debian's janus package");
        let ok = Command::new("sh")
            .arg("-c")
            .arg(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq janus",
            )
            .status()
            .await?
            .success();
        if !ok {
            bail!("janus is not installed and apt-get install janus failed");
        }
    }
    let port = free_port()?;
    let data = tempfile_dir::TempDir::new("janus-bench")?;
    janus_config(data.path(), port)?;
    let child = Command::new("janus")
        .arg("-F")
        .arg(data.path())
        .arg("-C")
        .arg(data.path().join("janus.jcfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting janus")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while crate::janus::Session::create(addr).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!("janus did not answer on {addr} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Target {
        kind: Kind::Janus,
        base: format!("http://127.0.0.1:{port}"),
        persistence: Kind::Janus.persistence(&TargetOpts::default()),
        pid: child.id(),
        child: Some(child),
        _data: Some(data),
    })
}

/// The cumulative buckets `(le, count)` of a Prometheus histogram in a `/metrics` text.
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// Estimates the `q` quantile (seconds) of a Prometheus histogram from its cumulative buckets,
/// interpolating linearly inside the bucket (as PromQL's `histogram_quantile` does).
pub fn prometheus_quantile(metrics: &str, name: &str, q: f64) -> Option<f64> {
    quantile_of(&buckets(metrics, name), q)
}

/// The same over the observations made between two scrapes (`before` may be empty).
pub fn prometheus_quantile_between(before: &str, after: &str, name: &str, q: f64) -> Option<f64> {
    let b = buckets(before, name);
    let a: Vec<(f64, f64)> = buckets(after, name)
        .into_iter()
        .map(|(le, n)| {
            let prev = b.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, n - prev)
        })
        .collect();
    quantile_of(&a, q)
}

fn quantile_of(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = if count > prev.1 {
                (rank - prev.1) / (count - prev.1)
            } else {
                0.0
            };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantile_interpolates_like_promql() {
        let m = "\
# TYPE x histogram
x_bucket{le=\"0.001\"} 50
x_bucket{le=\"0.002\"} 90
x_bucket{le=\"0.004\"} 100
x_bucket{le=\"+Inf\"} 100
x_sum 0.1
x_count 100
";
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(prometheus_quantile(m, "x", 0.5).expect("q"), 0.001));
        assert!(close(prometheus_quantile(m, "x", 0.25).expect("q"), 0.0005));
        assert!(close(prometheus_quantile(m, "x", 0.7).expect("q"), 0.0015));
        assert!(close(prometheus_quantile(m, "x", 0.95).expect("q"), 0.003));
        assert_eq!(prometheus_quantile(m, "y", 0.5), None);
        // Between two scrapes: only the later observations count.
        let before = "x_bucket{le=\"0.001\"} 50\nx_bucket{le=\"0.002\"} 50\nx_bucket{le=\"0.004\"} 50\nx_bucket{le=\"+Inf\"} 50\n";
        // The 50 new observations: 40 in (0.001, 0.002], 10 in (0.002, 0.004].
        assert!(close(
            prometheus_quantile_between(before, m, "x", 0.5).expect("q"),
            0.001625
        ));
        assert_eq!(prometheus_quantile_between(m, m, "x", 0.5), None);
    }

    #[test]
    fn target_names_parse() {
        assert_eq!(Kind::parse("tandem").expect("ok"), Kind::Tandem);
        assert_eq!(
            Kind::parse("y-websocket-server").expect("ok"),
            Kind::YWebsocketServer
        );
        assert_eq!(Kind::parse("socketio").expect("ok"), Kind::SocketIo);
        assert!(Kind::parse("socket-io-please").is_err());
        assert_eq!(
            Kind::parse("ws://127.0.0.1:9/x").expect("ok"),
            Kind::External("ws://127.0.0.1:9/x".into())
        );
    }
}
