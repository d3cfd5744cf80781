//! A small, total reading of an SDP offer's m-lines (mid, media type, the offerer's direction,
//! simulcast rids), to check a `call.offer`'s `publish` / `subscribe` entries before str0m applies
//! the offer. str0m parses and validates the SDP itself; this never panics on any input.

/// One m-line as the offerer describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `a=mid:` (empty when missing).
    pub mid: String,
    /// `audio`, `video`, `application`, …
    pub media: String,
    /// The offerer sends on it (`sendonly` / `sendrecv`, and not disabled with port 0).
    pub sends: bool,
    /// The offerer receives on it (`recvonly` / `sendrecv`, and not disabled).
    pub receives: bool,
    /// Simulcast rids the offerer sends (`a=simulcast:send`, else `a=rid:… send`), in order.
    pub rids: Vec<String>,
}

/// The m-lines of `sdp`, in order.
pub fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    let mut dir = "sendrecv";
    let mut disabled = false;
    let mut rid_send: Vec<String> = Vec::new();
    let mut simulcast: Option<Vec<String>> = None;
    let finish = |out: &mut Vec<Section>,
                  dir: &str,
                  disabled: bool,
                  rid_send: &mut Vec<String>,
                  simulcast: &mut Option<Vec<String>>| {
        if let Some(s) = out.last_mut() {
            s.sends = !disabled && matches!(dir, "sendonly" | "sendrecv");
            s.receives = !disabled && matches!(dir, "recvonly" | "sendrecv");
            s.rids = simulcast.take().unwrap_or_else(|| std::mem::take(rid_send));
            rid_send.clear();
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            finish(&mut out, dir, disabled, &mut rid_send, &mut simulcast);
            let mut parts = m.split(' ');
            let media = parts.next().unwrap_or_default().to_owned();
            disabled = parts.next() == Some("0");
            dir = "sendrecv";
            out.push(Section {
                mid: String::new(),
                media,
                sends: false,
                receives: false,
                rids: Vec::new(),
            });
            continue;
        }
        let Some(section) = out.last_mut() else {
            continue;
        };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            section.mid = mid.trim().to_owned();
        } else if let Some(d) = ["a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"]
            .iter()
            .find(|d| line == **d)
        {
            dir = &d[2..];
        } else if let Some(rid) = line.strip_prefix("a=rid:") {
            let mut p = rid.split(' ');
            if let (Some(id), Some("send")) = (p.next(), p.next()) {
                rid_send.push(id.to_owned());
            }
        } else if let Some(list) = line.strip_prefix("a=simulcast:send ") {
            // `h;m;l`, alternatives `h,x`, paused `~m`; the first of each alternative.
            let list = list.split(' ').next().unwrap_or_default();
            let rids = list
                .split(';')
                .filter_map(|alt| alt.split(',').next())
                .map(|r| r.trim_start_matches('~').to_owned())
                .filter(|r| !r.is_empty())
                .collect();
            simulcast = Some(rids);
        }
    }
    finish(&mut out, dir, disabled, &mut rid_send, &mut simulcast);
    out
}

/// Lists the answer's host candidates in every m-section, each followed by `a=end-of-candidates`.
/// str0m writes them in the first section only; some peers (aiortc) read candidates from the last
/// section sharing a BUNDLE transport, and every peer benefits from knowing that an ICE-lite
/// server has no more candidates to trickle.
pub fn complete_candidates(answer: &str) -> String {
    let candidates: Vec<&str> = answer
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    let mut out = String::with_capacity(answer.len() + 256);
    let mut in_media = false;
    let mut listed = false;
    let close = |out: &mut String, in_media: bool, listed: bool| {
        if in_media && !listed {
            for c in &candidates {
                out.push_str(c);
                out.push_str("\r\n");
            }
        }
        if in_media {
            out.push_str("a=end-of-candidates\r\n");
        }
    };
    for line in answer.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line == "a=end-of-candidates" {
            continue;
        }
        if line.starts_with("m=") {
            close(&mut out, in_media, listed);
            in_media = true;
            listed = false;
        } else if line.starts_with("a=candidate:") {
            listed = true;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    close(&mut out, in_media, listed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_lists_the_candidates_once_and_ends_them() {
        let answer = "v=0\r\na=group:BUNDLE 0 1\r\nm=video 9 UDP\r\na=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\na=mid:0\r\nm=audio 9 UDP\r\na=mid:1\r\n";
        let done = complete_candidates(answer);
        assert_eq!(
            done.matches("a=candidate:1 1 udp 1 10.0.0.1 5000 typ host")
                .count(),
            2
        );
        assert_eq!(done.matches("a=end-of-candidates").count(), 2);
        assert!(done.ends_with(
            "a=mid:1\r\na=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        ));
    }

    #[test]
    fn reads_directions_mids_and_simulcast() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\na=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;~h;f\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n";
        let s = sections(sdp);
        assert_eq!(s.len(), 5);
        assert_eq!(
            (
                s[0].mid.as_str(),
                s[0].media.as_str(),
                s[0].sends,
                s[0].receives
            ),
            ("0", "audio", true, false)
        );
        assert_eq!(s[1].rids, vec!["q", "h", "f"]);
        assert!(s[2].receives && !s[2].sends);
        assert!(!s[3].sends, "port 0 disables the m-line");
        assert!(s[4].sends && s[4].receives);
    }

    #[test]
    fn never_panics_on_garbage() {
        for junk in [
            "",
            "m=",
            "a=mid:\nm=video",
            "\u{0}\u{ffff}",
            "a=simulcast:send ;;;,~",
            "m=audio 0",
        ] {
            let _ = sections(junk);
        }
    }
}
