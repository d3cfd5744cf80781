//! The Redis side of membership: leases, the agreed ring, the drain set (Lua scripts, atomic in
//! Redis).

use std::time::Duration;

use proto::ShardId;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use crate::{Member, Ring};

/// What a shard publishes about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The shard id.
    pub id: ShardId,
    /// Address gateways connect their link to (`IP:PORT`).
    pub link: String,
    /// Address of the shard's admin HTTP endpoint (`IP:PORT`).
    pub admin: String,
    /// Relative weight, as a decimal string (kept a string so every process formats it the same).
    pub weight: String,
    /// Unix time (ms) the process started.
    pub started_ms: i64,
    /// The shard's lease length (ms).
    #[serde(default)]
    pub lease_ms: u64,
}

impl MemberInfo {
    /// The weight as a number (1 when unparsable).
    pub fn weight(&self) -> f64 {
        self.weight.parse().unwrap_or(1.0)
    }
}

/// The agreed ring plus every registered member's info.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The ring over live, non-draining members.
    pub ring: Ring,
    /// Every member with a live lease (draining ones included).
    pub members: Vec<MemberInfo>,
    /// Ids being drained.
    pub draining: Vec<ShardId>,
}

impl View {
    /// The info of `id`, if registered.
    pub fn info(&self, id: &ShardId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| &m.id == id)
    }
}

const RENEW: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
if cur then
  return 2
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 0
"#;

const SYNC: &str = r#"
local ids = redis.call('HKEYS', KEYS[1])
table.sort(ids)
local live = {}
local infos = {}
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    local raw = redis.call('HGET', KEYS[1], id)
    table.insert(infos, raw)
    if redis.call('SISMEMBER', KEYS[3], id) == 0 then
      local info = cjson.decode(raw)
      table.insert(live, id .. '=' .. tostring(info.weight))
    end
  else
    redis.call('HDEL', KEYS[1], id)
  end
end
local joined = table.concat(live, ',')
local cur = redis.call('HGET', KEYS[2], 'members')
local ver = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if cur ~= joined then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  ver = math.max(ver + 1, now)
  redis.call('HSET', KEYS[2], 'members', joined, 'version', tostring(ver))
end
local draining = redis.call('SMEMBERS', KEYS[3])
return {tostring(ver), joined, infos, draining}
"#;

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('SREM', KEYS[3], ARGV[2])
  return 1
end
return 0
"#;

/// A process's handle on cluster membership in Redis.
#[derive(Clone)]
pub struct Membership {
    conn: ConnectionManager,
    prefix: String,
    renew: redis::Script,
    sync: redis::Script,
    release: redis::Script,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Still ours; extended.
    Held,
    /// It had lapsed (or never existed); taken afresh.
    Taken,
    /// Another process (same shard id, different token) holds it.
    Conflict,
}

/// Errors talking to Redis.
pub type Error = redis::RedisError;

impl Membership {
    /// Connects to Redis at `url`; `cluster` names the cluster (several can share one Redis).
    pub async fn connect(url: &str, cluster: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_with_config(client, cfg).await?;
        Ok(Self {
            conn,
            prefix: format!("{{tandem:{cluster}}}"),
            renew: redis::Script::new(RENEW),
            sync: redis::Script::new(SYNC),
            release: redis::Script::new(RELEASE),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Takes or renews `info.id`'s lease (`token` identifies this process): [`Lease::Held`] when
    /// it was still ours, [`Lease::Taken`] when it had lapsed (or never existed) and was taken afresh
    /// (a shard that served before must assume others took its keys over), [`Lease::Conflict`] when
    /// another process holds it (a second process with the same id; nothing is changed).
    pub async fn renew(
        &self,
        info: &MemberInfo,
        token: &str,
        lease: Duration,
    ) -> Result<Lease, Error> {
        let json = serde_json::to_string(info).unwrap_or_default();
        let mut conn = self.conn.clone();
        let held: i64 = self
            .renew
            .key(self.key(&format!("lease:{}", info.id)))
            .key(self.key("members"))
            .arg(token)
            .arg(lease.as_millis() as u64)
            .arg(info.id.as_str())
            .arg(json)
            .invoke_async(&mut conn)
            .await?;
        Ok(match held {
            1 => Lease::Held,
            2 => Lease::Conflict,
            _ => Lease::Taken,
        })
    }

    /// Gives the lease up (a clean exit): the shard leaves the ring at once.
    pub async fn release(&self, id: &ShardId, token: &str) -> Result<bool, Error> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .release
            .key(self.key(&format!("lease:{id}")))
            .key(self.key("members"))
            .key(self.key("draining"))
            .arg(token)
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(n == 1)
    }

    /// Computes (and if changed, stores under a new version) the ring of live members.
    pub async fn sync(&self) -> Result<View, Error> {
        let mut conn = self.conn.clone();
        let (version, joined, infos, draining): (String, String, Vec<String>, Vec<String>) = self
            .sync
            .key(self.key("members"))
            .key(self.key("ring"))
            .key(self.key("draining"))
            .arg(self.key("lease:"))
            .invoke_async(&mut conn)
            .await?;
        let version = version.parse().unwrap_or(0);
        Ok(View {
            ring: Ring::new(version, parse_members(&joined)),
            members: infos
                .iter()
                .filter_map(|s| serde_json::from_str(s).ok())
                .collect(),
            draining: draining
                .iter()
                .filter_map(|s| ShardId::parse(s).ok())
                .collect(),
        })
    }

    /// Marks `id` as draining (it leaves the ring while it still holds its lease) or not.
    pub async fn set_draining(&self, id: &ShardId, on: bool) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        let cmd = if on { "SADD" } else { "SREM" };
        let _: i64 = redis::cmd(cmd)
            .arg(self.key("draining"))
            .arg(id.as_str())
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Milliseconds left on `id`'s lease (`None` when it has none).
    pub async fn lease_ttl_ms(&self, id: &ShardId) -> Result<Option<i64>, Error> {
        let mut conn = self.conn.clone();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(self.key(&format!("lease:{id}")))
            .query_async(&mut conn)
            .await?;
        Ok((ttl >= 0).then_some(ttl))
    }
}

/// Parses the stored member list `id=weight,id=weight`.
pub fn parse_members(joined: &str) -> Vec<Member> {
    joined
        .split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let (id, w) = s.rsplit_once('=')?;
            Some(Member {
                id: ShardId::parse(id).ok()?,
                weight: w.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_list_parses() {
        let m = parse_members("a=1,b=2.5,,bad");
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].weight, 2.5);
    }
}
