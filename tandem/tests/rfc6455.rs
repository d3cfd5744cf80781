//! Raw RFC 6455 probe against the real `tandem dev` binary: malformed framing gets the right close code
//! and the process keeps serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["dev", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tandem");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("listening line with a port");
    Server {
        child,
        port,
        _dir: dir,
    }
}

fn upgrade(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET /doc/probe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("handshake response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![b0, (if masked { 0x80 } else { 0 }) | payload.len() as u8];
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// Reads server frames until a close frame and returns its code.
fn close_code(s: &mut TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut i = 0;
        while i + 2 <= buf.len() {
            let op = buf[i] & 0x0f;
            let mut n = usize::from(buf[i + 1] & 0x7f);
            let mut j = i + 2;
            if n == 126 {
                if j + 2 > buf.len() {
                    break;
                }
                n = usize::from(u16::from_be_bytes([buf[j], buf[j + 1]]));
                j += 2;
            }
            if j + n > buf.len() {
                break;
            }
            if op == 8 {
                return (n >= 2).then(|| u16::from_be_bytes([buf[j], buf[j + 1]]));
            }
            i = j + n;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

#[test]
fn malformed_framing_gets_rfc6455_close_codes() {
    let server = start();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", frame(0x82, &[0, 0, 0], false), 1002),
        ("reserved opcode", frame(0x83, b"x", true), 1002),
        (
            "RSV1 without extension",
            frame(0xC2, &[0, 0, 0], true),
            1002,
        ),
        ("continuation without start", frame(0x80, b"x", true), 1002),
        ("fragmented ping", frame(0x09, b"x", true), 1002),
        (
            "close with invalid code",
            frame(0x88, &999u16.to_be_bytes(), true),
            1002,
        ),
        ("text frame", frame(0x81, b"hello", true), 1003),
        (
            "text with invalid UTF-8",
            frame(0x81, &[0xff, 0xfe], true),
            1007,
        ),
        (
            "unknown y-websocket message",
            frame(0x82, &[9, 9], true),
            1002,
        ),
        ("truncated varint", frame(0x82, &[0x80], true), 1002),
        (
            "normal close",
            frame(0x88, &1000u16.to_be_bytes(), true),
            1000,
        ),
    ];
    for (name, bytes, want) in cases {
        let mut s = upgrade(server.port);
        s.write_all(&bytes).expect("write frame");
        assert_eq!(close_code(&mut s), Some(want), "{name}");
    }
    // Still serving.
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}
