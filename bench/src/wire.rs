//! What the load generator puts on the wire: y-websocket sync/awareness messages (optionally inside
//! Hocuspocus's per-document envelope), and the tags that let a receiver time an edit.
//!
//! Every edit inserts a short tag into a Y.Text: `\x02T<editor>.<seq>.<intended µs>;` (hex). Yjs
//! stores inserted strings verbatim (UTF-8) inside updates, and servers relay or merge updates
//! without re-encoding strings, so a receiver finds the tags by scanning the update bytes instead
//! of integrating every update into its own document (which on a 2-core machine would make the load
//! generator, not the server, the bottleneck). The cold-load scenario does integrate what it receives
//! (with yrs) and checks the text.

use proto::yjs::lib0::{Decoder, Encoder};
use yrs::{updates::decoder::Decode, Doc, GetString, ReadTxn, Text, Transact, Update};

const TAG_MARK: &[u8] = b"\x02T";

/// One timed edit found in an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    pub editor: u32,
    pub seq: u32,
    /// Intended send time in µs since the run's start.
    pub intended_us: u64,
}

impl Tag {
    pub fn encode(&self) -> String {
        format!(
            "\u{2}T{:x}.{:x}.{:x};",
            self.editor, self.seq, self.intended_us
        )
    }
}

/// Calls `f` for every well-formed tag in `bytes`.
pub fn scan_tags(bytes: &[u8], mut f: impl FnMut(Tag)) {
    let mut i = 0;
    while i + TAG_MARK.len() <= bytes.len() {
        let Some(off) = find(&bytes[i..], TAG_MARK) else {
            return;
        };
        let start = i + off + TAG_MARK.len();
        match parse_tag(&bytes[start..]) {
            Some((tag, used)) => {
                f(tag);
                i = start + used;
            }
            None => i = start,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_tag(b: &[u8]) -> Option<(Tag, usize)> {
    let mut fields = [0u64; 3];
    let mut pos = 0;
    for (n, field) in fields.iter_mut().enumerate() {
        let mut digits = 0;
        while let Some(&c) = b.get(pos) {
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => break,
            };
            *field = field.checked_mul(16)?.checked_add(u64::from(v))?;
            digits += 1;
            pos += 1;
        }
        if digits == 0 || digits > 16 {
            return None;
        }
        let want = if n == 2 { b';' } else { b'.' };
        if b.get(pos) != Some(&want) {
            return None;
        }
        pos += 1;
    }
    Some((
        Tag {
            editor: u32::try_from(fields[0]).ok()?,
            seq: u32::try_from(fields[1]).ok()?,
            intended_us: fields[2],
        },
        pos,
    ))
}

/// How a target frames y-websocket messages on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dialect {
    /// One document per socket, chosen by the URL (Tandem's `/doc/ID`, y-websocket-server's `/ID`).
    YWebsocket,
    /// Hocuspocus: every message starts with the document name (lib0 varString); an auth message
    /// opens the document on the socket.
    Hocuspocus,
}

pub const MSG_SYNC: u64 = 0;
pub const MSG_AWARENESS: u64 = 1;
pub const MSG_AUTH: u64 = 2;
pub const SYNC_STEP1: u64 = 0;
pub const SYNC_STEP2: u64 = 1;
pub const SYNC_UPDATE: u64 = 2;

/// A decoded incoming message, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Step1,
    Step2(&'a [u8]),
    Update(&'a [u8]),
    Awareness,
    /// Hocuspocus: the document is open for this socket.
    Authenticated,
    /// Hocuspocus: permission denied (or the y-websocket auth message).
    Denied,
    Other,
}

impl Dialect {
    fn start(&self, doc: &str, cap: usize) -> Encoder {
        let mut e = Encoder::with_capacity(cap + doc.len() + 16);
        if *self == Dialect::Hocuspocus {
            e.write_var_str(doc);
        }
        e
    }

    /// The messages a client sends right after the socket opens.
    pub fn hello(&self, doc: &str, state_vector: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if *self == Dialect::Hocuspocus {
            // Auth / Token with an empty token (no onAuthenticate hook configured).
            let mut e = self.start(doc, 4);
            e.write_var_u64(MSG_AUTH);
            e.write_var_u64(0);
            e.write_var_str("");
            out.push(e.into_vec());
        }
        out.push(self.sync(doc, SYNC_STEP1, state_vector));
        out
    }

    pub fn sync(&self, doc: &str, sub: u64, payload: &[u8]) -> Vec<u8> {
        let mut e = self.start(doc, payload.len() + 12);
        e.write_var_u64(MSG_SYNC);
        e.write_var_u64(sub);
        e.write_var_bytes(payload);
        e.into_vec()
    }

    pub fn awareness(&self, doc: &str, update: &[u8]) -> Vec<u8> {
        let mut e = self.start(doc, update.len() + 12);
        e.write_var_u64(MSG_AWARENESS);
        e.write_var_bytes(update);
        e.into_vec()
    }

    /// Decodes one incoming frame; `None` for bytes that do not parse.
    pub fn decode<'a>(&self, frame: &'a [u8]) -> Option<Incoming<'a>> {
        let mut d = Decoder::new(frame);
        if *self == Dialect::Hocuspocus {
            d.read_var_str().ok()?;
        }
        Some(match d.read_var_u64().ok()? {
            MSG_SYNC => match d.read_var_u64().ok()? {
                SYNC_STEP1 => Incoming::Step1,
                SYNC_STEP2 => Incoming::Step2(d.read_var_bytes().ok()?),
                SYNC_UPDATE => Incoming::Update(d.read_var_bytes().ok()?),
                _ => Incoming::Other,
            },
            MSG_AWARENESS => Incoming::Awareness,
            MSG_AUTH => match (self, d.read_var_u64().ok()?) {
                (Dialect::Hocuspocus, 2) => Incoming::Authenticated,
                (_, 0) => Incoming::Denied,
                _ => Incoming::Other,
            },
            // Hocuspocus 4 (SyncReply): a sync message answering ours.
            4 if *self == Dialect::Hocuspocus => match d.read_var_u64().ok()? {
                SYNC_STEP2 => Incoming::Step2(d.read_var_bytes().ok()?),
                SYNC_UPDATE => Incoming::Update(d.read_var_bytes().ok()?),
                _ => Incoming::Other,
            },
            _ => Incoming::Other,
        })
    }
}

/// One simulated editor's own replica: it appends its tags to a Y.Text and produces the update
/// each edit sends. It does not integrate other editors' updates (see the module comment), which
/// keeps each update valid: it only references the editor's own earlier items.
pub struct EditorDoc {
    doc: Doc,
    text: yrs::TextRef,
    len: u32,
}

impl EditorDoc {
    pub fn new(client_id: u64) -> Self {
        let doc = Doc::with_client_id(client_id);
        let text = doc.get_or_insert_text("t");
        Self { doc, text, len: 0 }
    }

    /// Appends `s` and returns the update (v1) that carries it.
    pub fn insert(&mut self, s: &str) -> Vec<u8> {
        let mut txn = self.doc.transact_mut();
        self.text.insert(&mut txn, self.len, s);
        self.len += s.chars().count() as u32;
        txn.encode_update_v1()
    }

    pub fn state_vector(&self) -> Vec<u8> {
        use yrs::updates::encoder::Encode;
        self.doc.transact().state_vector().encode_v1()
    }

    /// The whole replica as one update (the answer to a peer's sync step 1).
    pub fn state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    }
}

/// Integrates updates into a full replica (the cold-load scenario checks the document with it).
pub struct Replica {
    doc: Doc,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl Replica {
    pub fn new() -> Self {
        Self { doc: Doc::new() }
    }

    pub fn apply(&self, update: &[u8]) -> anyhow::Result<()> {
        let u = Update::decode_v1(update)?;
        self.doc.transact_mut().apply_update(u)?;
        Ok(())
    }

    pub fn text(&self) -> String {
        let t = self.doc.get_or_insert_text("t");
        t.get_string(&self.doc.transact())
    }
}

/// An awareness update for one client: `{"user":{"name":…},"cursor":n}` at `clock`.
pub fn awareness_update(client_id: u64, clock: u64, name: &str, cursor: u64) -> Vec<u8> {
    let state = format!(r#"{{"user":{{"name":"{name}"}},"cursor":{cursor}}}"#);
    proto::yjs::message::encode_awareness_update(&[(client_id, clock, state.as_str())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_survive_a_yjs_update_and_a_merge() {
        let mut a = EditorDoc::new(11);
        let mut b = EditorDoc::new(12);
        let t1 = Tag {
            editor: 3,
            seq: 0,
            intended_us: 123_456,
        };
        let t2 = Tag {
            editor: 3,
            seq: 1,
            intended_us: 223_456,
        };
        let t3 = Tag {
            editor: 4,
            seq: 7,
            intended_us: u64::from(u32::MAX) + 5,
        };
        let u1 = a.insert(&t1.encode());
        let u2 = a.insert(&t2.encode());
        let u3 = b.insert(&t3.encode());
        let mut seen = Vec::new();
        scan_tags(&u1, |t| seen.push(t));
        assert_eq!(seen, vec![t1]);
        // A server that merges updates (Hocuspocus's sync step 2, Tandem's snapshot) joins strings.
        let merged =
            yrs::merge_updates_v1([u1.as_slice(), u2.as_slice(), u3.as_slice()]).expect("merge");
        let mut seen = Vec::new();
        scan_tags(&merged, |t| seen.push(t));
        seen.sort_by_key(|t| (t.editor, t.seq));
        assert_eq!(seen, vec![t1, t2, t3]);
        let r = Replica::new();
        r.apply(&merged).expect("valid update");
        assert_eq!(r.text().matches('\u{2}').count(), 3);
    }

    #[test]
    fn malformed_tags_are_skipped() {
        let mut seen = Vec::new();
        scan_tags(b"\x02T1.2;\x02Tz.1.1;\x02T1.2.3\x02T5.6.7;\x02T", |t| {
            seen.push(t)
        });
        assert_eq!(
            seen,
            vec![Tag {
                editor: 5,
                seq: 6,
                intended_us: 7
            }]
        );
    }

    #[test]
    fn hocuspocus_framing_round_trips() {
        let h = Dialect::Hocuspocus;
        let msgs = h.hello("d1", &[0]);
        // docName "d1", Auth(2), Token(0), empty token.
        assert_eq!(msgs[0], vec![2, b'd', b'1', 2, 0, 0]);
        assert_eq!(h.decode(&msgs[1]), Some(Incoming::Step1));
        let up = h.sync("d1", SYNC_UPDATE, &[9, 9]);
        assert_eq!(h.decode(&up), Some(Incoming::Update(&[9, 9])));
        let y = Dialect::YWebsocket;
        assert_eq!(y.sync("x", SYNC_STEP2, &[1]), vec![0, 1, 1, 1]);
        assert_eq!(y.decode(&[0, 1, 1, 1]), Some(Incoming::Step2(&[1])));
        assert_eq!(y.decode(&[1, 0]), Some(Incoming::Awareness));
        assert_eq!(y.decode(&[]), None);
    }
}
