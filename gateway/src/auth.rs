//! JWT authentication and per-document grants.
//!
//! Algorithms are pinned server-side: HS256 with a shared secret and ES256 with a public key, each only
//! when configured; the token's header picks which of the configured ones applies and nothing else is
//! accepted. `exp`, `nbf`, `aud`, `iss` and `sub` are required and checked with a small leeway.
//!
//! Claims: `sub` (the user id, recorded as the actor of every event), `docs`, a map from a document
//! id pattern (`*` matches any run of characters) to `read`, `write` or `admin`, and `rooms`, the same
//! for chat rooms. The highest access of every matching pattern applies. Example:
//! `{"sub":"ada","docs":{"notes-*":"write","*":"read"},"rooms":{"team-*":"write"}, …}`.
//!
//! Tokens are never logged.

use std::collections::BTreeMap;

use jsonwebtoken::{
    decode, decode_header, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use proto::{DocId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

pub use proto::Access;

/// JWT settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// HS256 shared secret; enables HS256 tokens.
    pub hs256_secret: Option<String>,
    /// ES256 public key (PEM); enables ES256 tokens.
    pub es256_public_key_pem: Option<String>,
    /// Required `aud`.
    pub audience: String,
    /// Required `iss`.
    pub issuer: String,
    /// Clock leeway in seconds for `exp` and `nbf` (at most 5).
    pub leeway_secs: u64,
    /// Accept connections without a token as user `anonymous` with write access (`tandem dev` only).
    pub allow_anonymous: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            es256_public_key_pem: None,
            audience: "tandem".into(),
            issuer: "tandem".into(),
            leeway_secs: 5,
            allow_anonymous: false,
        }
    }
}

/// The claims Tandem reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry (seconds since the Unix epoch).
    pub exp: u64,
    /// Not before.
    pub nbf: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: u64,
    /// Audience.
    pub aud: String,
    /// Issuer.
    pub iss: String,
    /// Document id pattern → access.
    #[serde(default)]
    pub docs: BTreeMap<String, Access>,
    /// Room id pattern → access.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rooms: BTreeMap<String, Access>,
}

/// An authenticated user and every grant of their token (a `/v1` socket checks each document and
/// room it opens against these).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The actor recorded on events.
    pub user: UserId,
    docs: BTreeMap<String, Access>,
    rooms: BTreeMap<String, Access>,
    anonymous: bool,
}

impl Identity {
    /// A user with these grants (pattern → access).
    pub fn new(
        user: UserId,
        docs: BTreeMap<String, Access>,
        rooms: BTreeMap<String, Access>,
    ) -> Self {
        Self {
            user,
            docs,
            rooms,
            anonymous: false,
        }
    }

    /// `tandem dev` without a key: user `anonymous`, write access to everything.
    pub fn anonymous() -> Self {
        Self {
            user: UserId::anonymous(),
            docs: BTreeMap::new(),
            rooms: BTreeMap::new(),
            anonymous: true,
        }
    }

    /// Access on a document, if any.
    pub fn doc_access(&self, doc: &DocId) -> Option<Access> {
        if self.anonymous {
            return Some(Access::Write);
        }
        best(&self.docs, doc.as_str())
    }

    /// Access in a room, if any.
    pub fn room_access(&self, room: &RoomId) -> Option<Access> {
        if self.anonymous {
            return Some(Access::Write);
        }
        best(&self.rooms, room.as_str())
    }
}

fn best(grants: &BTreeMap<String, Access>, id: &str) -> Option<Access> {
    grants
        .iter()
        .filter(|(pattern, _)| glob_match(pattern, id))
        .map(|(_, a)| *a)
        .max()
}

/// Who is connecting and what they may do on one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The actor recorded on events.
    pub user: UserId,
    /// Access on the requested document.
    pub access: Access,
}

/// Verifies tokens with the configured keys.
pub struct Authenticator {
    cfg: AuthConfig,
    hs256: Option<DecodingKey>,
    es256: Option<DecodingKey>,
}

impl Authenticator {
    /// Builds the verifier; fails on an unusable public key.
    pub fn new(cfg: AuthConfig) -> anyhow::Result<Self> {
        let hs256 = cfg
            .hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let es256 = match &cfg.es256_public_key_pem {
            Some(pem) => Some(
                DecodingKey::from_ec_pem(pem.as_bytes())
                    .map_err(|e| anyhow::anyhow!("invalid ES256 public key: {e}"))?,
            ),
            None => None,
        };
        Ok(Self { cfg, hs256, es256 })
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        self.hs256.is_some() || self.es256.is_some()
    }

    /// Authenticates a connection to `doc` with an optional token.
    pub fn authorize(&self, token: Option<&str>, doc: &DocId) -> Result<Principal, GatewayError> {
        let id = self.authenticate(token)?;
        let access = id.doc_access(doc).ok_or(GatewayError::Forbidden)?;
        Ok(Principal {
            user: id.user,
            access,
        })
    }

    /// Authenticates a token (or anonymous access, when allowed) into the user and their grants.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, GatewayError> {
        let Some(token) = token else {
            if self.cfg.allow_anonymous {
                return Ok(Identity {
                    user: UserId::anonymous(),
                    docs: BTreeMap::new(),
                    rooms: BTreeMap::new(),
                    anonymous: true,
                });
            }
            return Err(GatewayError::Unauthorized);
        };
        let claims = self.verify(token)?;
        let user = UserId::parse(&claims.sub).map_err(|_| GatewayError::Unauthorized)?;
        Ok(Identity {
            user,
            docs: claims.docs,
            rooms: claims.rooms,
            anonymous: false,
        })
    }

    /// Verifies signature, algorithm and the registered claims.
    pub fn verify(&self, token: &str) -> Result<Claims, GatewayError> {
        let header = decode_header(token).map_err(|_| GatewayError::Unauthorized)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::ES256 => self.es256.as_ref(),
            _ => None,
        }
        .ok_or(GatewayError::Unauthorized)?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_audience(&[&self.cfg.audience]);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        v.validate_nbf = true;
        v.leeway = self.cfg.leeway_secs.min(5);
        decode::<Claims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|_| GatewayError::Unauthorized)
    }
}

/// Mints an HS256 token (the `tandem token` subcommand and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let p = pattern.as_bytes();
    let s = s.as_bytes();
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A P-256 key pair generated for these tests only.
    const EC_PRIVATE: &str = include_str!("../tests/keys/es256-private.pem");
    const EC_PUBLIC: &str = include_str!("../tests/keys/es256-public.pem");

    fn claims(docs: &[(&str, Access)]) -> Claims {
        let now = now_secs();
        Claims {
            sub: "ada".into(),
            exp: now + 60,
            nbf: now - 1,
            iat: now,
            aud: "tandem".into(),
            iss: "tandem".into(),
            docs: docs.iter().map(|(p, a)| (p.to_string(), *a)).collect(),
            rooms: BTreeMap::new(),
        }
    }

    fn hs() -> Authenticator {
        Authenticator::new(AuthConfig {
            hs256_secret: Some("s3cret".into()),
            ..AuthConfig::default()
        })
        .expect("valid config")
    }

    fn doc(s: &str) -> DocId {
        DocId::parse(s).expect("valid")
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("notes-*", "notes-1"));
        assert!(!glob_match("notes-*", "note-1"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b", "ab-"));
        assert!(glob_match("exact", "exact"));
    }

    #[test]
    fn grants_pick_the_highest_matching_access() {
        let a = hs();
        let t = mint_hs256(
            "s3cret",
            &claims(&[("*", Access::Read), ("notes-*", Access::Write)]),
        )
        .expect("mint");
        assert_eq!(
            a.authorize(Some(&t), &doc("notes-1"))
                .map(|p| p.access)
                .ok(),
            Some(Access::Write)
        );
        assert_eq!(
            a.authorize(Some(&t), &doc("other")).map(|p| p.access).ok(),
            Some(Access::Read)
        );
        let t = mint_hs256("s3cret", &claims(&[("notes-*", Access::Write)])).expect("mint");
        assert!(matches!(
            a.authorize(Some(&t), &doc("other")),
            Err(GatewayError::Forbidden)
        ));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let a = hs();
        let mut c = claims(&[("*", Access::Write)]);
        assert!(
            a.authorize(None, &doc("d")).is_err(),
            "anonymous not allowed"
        );
        let wrong_key = mint_hs256("other", &c).expect("mint");
        assert!(a.verify(&wrong_key).is_err());
        c.exp = now_secs() - 60;
        assert!(
            a.verify(&mint_hs256("s3cret", &c).expect("mint")).is_err(),
            "expired"
        );
        let mut c = claims(&[("*", Access::Write)]);
        c.nbf = now_secs() + 60;
        assert!(
            a.verify(&mint_hs256("s3cret", &c).expect("mint")).is_err(),
            "not yet valid"
        );
        let mut c = claims(&[("*", Access::Write)]);
        c.aud = "someone-else".into();
        assert!(
            a.verify(&mint_hs256("s3cret", &c).expect("mint")).is_err(),
            "audience"
        );
        let mut c = claims(&[("*", Access::Write)]);
        c.iss = "mallory".into();
        assert!(
            a.verify(&mint_hs256("s3cret", &c).expect("mint")).is_err(),
            "issuer"
        );
        assert!(a.verify("not.a.jwt").is_err());
    }

    #[test]
    fn es256_is_accepted_only_when_configured() {
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("test key");
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(&[("*", Access::Read)]),
            &key,
        )
        .expect("sign");
        assert!(hs().verify(&t).is_err(), "ES256 not configured");
        let a = Authenticator::new(AuthConfig {
            es256_public_key_pem: Some(EC_PUBLIC.into()),
            ..AuthConfig::default()
        })
        .expect("valid config");
        assert_eq!(a.verify(&t).map(|c| c.sub).ok().as_deref(), Some("ada"));
        // An HS256 token is refused when only ES256 is configured (no algorithm confusion).
        let hs_token = mint_hs256("s3cret", &claims(&[("*", Access::Read)])).expect("mint");
        assert!(a.verify(&hs_token).is_err());
    }

    #[test]
    fn room_grants_are_separate_from_document_grants() {
        let a = hs();
        let mut c = claims(&[("*", Access::Write)]);
        c.rooms.insert("team-*".into(), Access::Write);
        c.rooms.insert("announce".into(), Access::Read);
        let id = a
            .authenticate(Some(&mint_hs256("s3cret", &c).expect("mint")))
            .expect("valid");
        let room = |s: &str| RoomId::parse(s).expect("valid");
        assert_eq!(id.room_access(&room("team-1")), Some(Access::Write));
        assert_eq!(id.room_access(&room("announce")), Some(Access::Read));
        assert_eq!(
            id.room_access(&room("secret")),
            None,
            "docs grants say nothing about rooms"
        );
        assert_eq!(id.doc_access(&doc("secret")), Some(Access::Write));
    }

    #[test]
    fn anonymous_when_allowed() {
        let a = Authenticator::new(AuthConfig {
            allow_anonymous: true,
            ..AuthConfig::default()
        })
        .expect("valid config");
        let p = a.authorize(None, &doc("d")).expect("anonymous");
        assert_eq!(p.user, UserId::anonymous());
    }
}
