//! The call core's limits and media settings (every one a flag of `tandem dev` / `tandem shard`).

use std::net::SocketAddr;
use std::time::Duration;

use proto::v1::IceServer;

/// Settings of one shard's calls.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Addresses put in every answer as host candidates (the shard's media socket as clients reach
    /// it: `--media-advertise`, else the bound address).
    pub candidates: Vec<SocketAddr>,
    /// ICE servers handed to clients in `call.joined` (TURN with static credentials, or filled per
    /// user by the driver with time-limited ones).
    pub ice_servers: Vec<IceServer>,
    /// Participants per call.
    pub max_participants: usize,
    /// Tracks one participant may publish at once.
    pub max_tracks: usize,
    /// Largest SDP offer accepted, in bytes.
    pub max_sdp_bytes: usize,
    /// Largest datagram accepted from the network, in bytes (larger ones are dropped).
    pub max_datagram: usize,
    /// Bitrate cap per published video track (bits/s): higher layers are not forwarded above it.
    pub max_track_bitrate: u64,
    /// Initial downstream estimate per participant before the bandwidth estimator has one (bits/s).
    pub initial_bitrate: u64,
    /// Estimate each subscriber's downstream bandwidth (str0m's TWCC-based BWE, which also paces
    /// what is sent to the estimate), choose layers to fit it and pause video that does not. Off
    /// (the default): no estimator and no pacing; layers are chosen to fit `initial_bitrate` as a
    /// fixed budget per subscriber. Off because, measured with `bench call --participants 20` on
    /// this machine, the estimator fell under CPU load on loopback and str0m's pacer then queued
    /// media without bound (forwarding p95 11 s against 4.3 ms with it off, same run settings).
    pub bwe: bool,
    /// Let the bandwidth estimator probe above its estimate towards what subscribers want (off: the
    /// estimate starts at `initial_bitrate` and only falls under congestion). Off by default: on
    /// the in-memory test network str0m 0.25's probing collapsed the estimate to ~130 kbit/s with
    /// no loss and no delay, which would pin every subscriber to the lowest layer.
    pub bwe_probe: bool,
    /// When a call has more audio tracks than this, only the this-many loudest are forwarded
    /// (0 = forward every audio track).
    pub audio_top_n: usize,
    /// A participant whose media connection is lost for this long is removed.
    pub ice_timeout: Duration,
    /// A participant whose media never connects within this long after joining is removed.
    pub connect_timeout: Duration,
    /// Call requests per participant per second (burst the same) before `limit` errors.
    pub signal_rate: u32,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            candidates: Vec::new(),
            ice_servers: Vec::new(),
            max_participants: 50,
            max_tracks: 4,
            max_sdp_bytes: 512 * 1024,
            max_datagram: 1500,
            max_track_bitrate: 4_000_000,
            initial_bitrate: 1_500_000,
            bwe: false,
            bwe_probe: false,
            audio_top_n: 0,
            ice_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            signal_rate: 50,
        }
    }
}
