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

/// Runs `tandem ARGS` without any `TANDEM_…` variable of the caller; returns (success, stderr).
fn tandem(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TANDEM_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cluster_roles_take_their_own_settings_and_ignore_the_other_roles() {
    // A shard accepts edge flags (one set of flags can serve every role) and checks its own.
    let (ok, err) = tandem(&[
        "shard",
        "--id",
        "s1",
        "--listen",
        "127.0.0.1:1",
        "--jwt-hs256-secret",
        "short",
        "--database-url",
        "postgres://nowhere/x",
    ]);
    assert!(!ok);
    assert!(err.contains("--redis-url is required"), "{err}");
    // A gateway accepts document settings, ignores them, and checks its own.
    let (ok, err) = tandem(&[
        "gateway",
        "--redis-url",
        "redis://127.0.0.1:1",
        "--max-doc-bytes",
        "5",
        "--database-url",
        "postgres://nowhere/x",
        "--jwt-hs256-secret",
        "short",
    ]);
    assert!(!ok);
    assert!(err.contains("at least 16 bytes"), "{err}");
    let (ok, err) = tandem(&["gateway", "--redis-url", "redis://127.0.0.1:1"]);
    assert!(!ok);
    assert!(err.contains("needs a JWT key"), "{err}");
}

#[test]
fn cluster_config_files_are_checked_and_old_ones_still_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A typo in a role's own file is refused, not silently ignored.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "lease_msec = 5\n").expect("write");
    let (ok, err) = tandem(&[
        "shard",
        "--id",
        "s1",
        "--config",
        typo.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(err.contains("unknown field"), "{err}");
    // A `tandem dev` file (the shape cluster roles read before) still works: its store settings
    // reach the shard (here: the Redis URL is present, so the check that fails is the next one).
    let legacy = dir.path().join("dev.toml");
    std::fs::write(
        &legacy,
        "redis_url = \"redis://127.0.0.1:1\"\n[shard]\nsnapshot_every = 0\n",
    )
    .expect("write");
    let (ok, err) = tandem(&[
        "shard",
        "--id",
        "s1",
        "--config",
        legacy.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert!(err.contains("--snapshot-every must be at least 1"), "{err}");
    // The new shape.
    let own = dir.path().join("shard.toml");
    std::fs::write(
        &own,
        "id = \"s7\"\nlease_ms = 100\n[store]\ndatabase_url = \"postgres://nowhere/x\"\nredis_url = \"redis://127.0.0.1:1\"\n",
    )
    .expect("write");
    let (ok, err) = tandem(&["shard", "--config", own.to_str().expect("utf-8")]);
    assert!(!ok);
    assert!(err.contains("--lease-ms must be at least 300"), "{err}");
}
