//! `tandem webhooks`: a downstream consumer of the Redis bus that POSTs selected events to an HTTP
//! endpoint — the proof that new services can subscribe to existing events.
//!
//! Reads the global feed (`tandem:feed`) with a consumer group (so several dispatchers share the work
//! and a restarted one resumes where it stopped), delivers each selected event at least once with
//! exponential backoff, and after `--max-attempts` failures moves it to the dead-letter stream
//! `tandem:webhooks:dead`. Receivers deduplicate by the event id (`X-Tandem-Event-Id`).
//!
//! Signature: `X-Tandem-Signature: sha256=HEX(HMAC-SHA256(secret, TIMESTAMP + "." + BODY))` with
//! `X-Tandem-Timestamp: TIMESTAMP` (Unix seconds); the body is the event envelope as JSON
//! (`proto/schema/event.schema.json`).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis::aio::MultiplexedConnection;
use sha2::Sha256;

/// `tandem webhooks` options.
#[derive(Debug, Args)]
pub struct WebhookOpts {
    /// Redis URL of the bus.
    #[arg(long, env = "TANDEM_REDIS_URL", hide_env_values = true)]
    redis_url: String,
    /// Endpoint to POST events to (http://).
    #[arg(long, env = "TANDEM_WEBHOOK_URL")]
    target: String,
    /// HMAC-SHA256 signing secret.
    #[arg(long, env = "TANDEM_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// Event types to deliver (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "document.updated,chat.message.sent"
    )]
    types: Vec<String>,
    /// Delivery attempts before an event goes to the dead-letter stream.
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// First retry delay in milliseconds (doubles each attempt).
    #[arg(long, default_value_t = 200)]
    retry_ms: u64,
    /// Consumer group name.
    #[arg(long, default_value = "webhooks")]
    group: String,
    /// Consumer name within the group.
    #[arg(long, default_value = "dispatcher-1")]
    consumer: String,
}

const FEED: &str = "tandem:feed";
/// Where undeliverable events go.
pub const DEAD_LETTER: &str = "tandem:webhooks:dead";

type Entry = (String, HashMap<String, Vec<u8>>);

/// `sha256=HEX` of HMAC-SHA256(secret, "{timestamp}.{body}").
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn read(
    con: &mut MultiplexedConnection,
    o: &WebhookOpts,
    id: &str,
    block: bool,
) -> redis::RedisResult<Vec<Entry>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(&o.group)
        .arg(&o.consumer)
        .arg("COUNT")
        .arg(100);
    if block {
        // Below the client's 500 ms response timeout.
        cmd.arg("BLOCK").arg(250);
    }
    cmd.arg("STREAMS").arg(FEED).arg(id);
    let reply: Option<Vec<(String, Vec<Entry>)>> = cmd.query_async(con).await?;
    Ok(reply
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(_, e)| e)
        .collect())
}

async fn ensure_group(con: &mut MultiplexedConnection, group: &str) -> anyhow::Result<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(FEED)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Runs the dispatcher until Ctrl-C.
#[allow(clippy::print_stdout)]
pub async fn run(o: WebhookOpts) -> anyhow::Result<()> {
    let client = redis::Client::open(o.redis_url.as_str()).context("--redis-url")?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let target: hyper::Uri = o.target.parse().context("--target")?;
    ensure_group(&mut con, &o.group).await?;
    tracing::info!(target = %o.target, group = %o.group, "webhook dispatcher running");
    // First our own pending entries (delivered before a crash, never acknowledged), then new ones.
    let mut backlog = true;
    loop {
        let entries = tokio::select! {
            r = read(&mut con, &o, if backlog { "0" } else { ">" }, !backlog) => r,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                // NOGROUP after a Redis flush or restart: the bus refills; recreate the group.
                tracing::warn!(error = %e, "reading the feed failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = ensure_group(&mut con, &o.group).await;
                continue;
            }
        };
        if backlog && entries.is_empty() {
            backlog = false;
            continue;
        }
        for (entry_id, fields) in entries {
            let wanted = fields
                .get("type")
                .and_then(|t| std::str::from_utf8(t).ok())
                .is_some_and(|t| o.types.iter().any(|w| w == t));
            if wanted {
                deliver(&http, &target, &o, &mut con, &entry_id, &fields).await?;
            }
            let _: () = redis::cmd("XACK")
                .arg(FEED)
                .arg(&o.group)
                .arg(&entry_id)
                .query_async(&mut con)
                .await?;
        }
    }
}

async fn deliver(
    http: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    target: &hyper::Uri,
    o: &WebhookOpts,
    con: &mut MultiplexedConnection,
    entry_id: &str,
    fields: &HashMap<String, Vec<u8>>,
) -> anyhow::Result<()> {
    let event = match store::bus::event_from_entry(fields) {
        Ok(e) => e,
        Err(e) => return dead_letter(con, fields, &format!("undecodable entry: {e}"), 0).await,
    };
    let body = serde_json::to_vec(&event)?;
    let mut delay = Duration::from_millis(o.retry_ms.max(1));
    let mut last_error = String::new();
    for attempt in 1..=o.max_attempts.max(1) {
        let ts = gateway::auth::now_secs();
        let req = hyper::Request::post(target.clone())
            .header("content-type", "application/json")
            .header("x-tandem-event-id", event.id.to_string())
            .header("x-tandem-event-type", event.payload.event_type().name())
            .header("x-tandem-timestamp", ts.to_string())
            .header("x-tandem-signature", signature(&o.secret, ts, &body))
            .body(Full::new(Bytes::from(body.clone())))?;
        match tokio::time::timeout(Duration::from_secs(10), http.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                let _ = resp.into_body().collect().await;
                tracing::debug!(entry = entry_id, id = %event.id, attempt, "delivered");
                return Ok(());
            }
            Ok(Ok(resp)) => last_error = format!("HTTP {}", resp.status()),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "timeout".into(),
        }
        if attempt < o.max_attempts {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
    tracing::warn!(id = %event.id, error = %last_error, "undeliverable; moved to the dead-letter stream");
    dead_letter(con, fields, &last_error, o.max_attempts).await
}

async fn dead_letter(
    con: &mut MultiplexedConnection,
    fields: &HashMap<String, Vec<u8>>,
    error: &str,
    attempts: u32,
) -> anyhow::Result<()> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(DEAD_LETTER)
        .arg("MAXLEN")
        .arg("~")
        .arg(100_000)
        .arg("*");
    for (k, v) in fields {
        cmd.arg(k).arg(v.as_slice());
    }
    cmd.arg("error").arg(error).arg("attempts").arg(attempts);
    let _: String = cmd.query_async(con).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Reference value computed with: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            super::signature("s3cret", 1_700_000_000, br#"{"a":1}"#),
            format!("sha256={}", super::tests::openssl_reference())
        );
    }

    fn openssl_reference() -> &'static str {
        include_str!("../tests/webhook-signature.txt").trim()
    }
}
