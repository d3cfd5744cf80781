//! Time-limited TURN credentials (the "TURN REST API" scheme of coturn's `use-auth-secret`):
//! username `expiry:user`, password `base64(HMAC-SHA1(secret, username))`.

use hmac::{Hmac, Mac};
use proto::v1::IceServer;
use sha1::Sha1;

/// TURN settings: where, and the secret shared with the TURN server.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// The shared secret (coturn `static-auth-secret`).
    pub secret: String,
    /// How long credentials stay valid, in seconds.
    pub ttl_secs: u64,
}

impl TurnConfig {
    /// The ICE server entry for `user`, valid until `now_unix + ttl`.
    pub fn ice_server(&self, user: &str, now_unix: u64) -> IceServer {
        let username = format!("{}:{user}", now_unix + self.ttl_secs);
        IceServer {
            urls: self.urls.clone(),
            credential: Some(credential(&self.secret, &username)),
            username: Some(username),
        }
    }
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn credential(secret: &str, username: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    proto::event::base64::encode(&mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_scheme() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        assert_eq!(
            credential("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
        let s = TurnConfig {
            urls: vec!["turn:turn.example.com:3478".into()],
            secret: "s3cret".into(),
            ttl_secs: 3600,
        }
        .ice_server("ada", 1_700_000_000);
        assert_eq!(s.username.as_deref(), Some("1700003600:ada"));
        assert_eq!(s.credential, Some(credential("s3cret", "1700003600:ada")));
    }
}
