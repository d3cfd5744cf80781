//! The `tandem` binary's command line: tokens it mints verify, bad configuration is refused clearly.

use std::process::Command;

use gateway::auth::{AuthConfig, Authenticator};
use proto::DocId;

const SECRET: &str = "a-test-secret-of-enough-length";

#[test]
fn minted_tokens_verify_with_their_grants() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "token",
            "--secret",
            SECRET,
            "--sub",
            "ada",
            "--grant",
            "notes-*=write",
            "--grant",
            "*=read",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let auth = Authenticator::new(AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    })
    .expect("config");
    let p = auth
        .authorize(Some(token.trim()), &DocId::parse("notes-1").expect("valid"))
        .expect("authorized");
    assert_eq!(p.user.as_str(), "ada");
    assert_eq!(p.access, gateway::auth::Access::Write);
    let p = auth
        .authorize(Some(token.trim()), &DocId::parse("other").expect("valid"))
        .expect("authorized");
    assert_eq!(p.access, gateway::auth::Access::Read);
}

#[test]
fn bad_grants_and_configuration_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "token",
            "--secret",
            SECRET,
            "--sub",
            "ada",
            "--grant",
            "notes-*=owner",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown access level"));

    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["dev", "--shards", "0", "--listen", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shards must be between 1 and 64"));

    let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "dev",
            "--jwt-hs256-secret",
            "short",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 bytes"));
}
