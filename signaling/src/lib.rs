//! WebRTC signaling and SFU around str0m (sans-IO): call rooms of up to 20 participants with screen
//! sharing.
//!
//! Empty on purpose: the video-rooms issue fills this crate. It is in the workspace now so that the
//! folder layout matches DESIGN.md from the start.

#![forbid(unsafe_code)]
