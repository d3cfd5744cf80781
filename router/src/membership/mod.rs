//! Membership: shards register with a lease in Redis; every process derives the same versioned ring.
//!
//! Keys (all under one hash tag, so a Redis Cluster keeps them in one slot):
//! * `{tandem:CLUSTER}:members` — hash `shard id → MemberInfo JSON` (address, admin address, weight).
//! * `{tandem:CLUSTER}:lease:ID` — the shard's lease: a random token with a TTL (`PX`), renewed every
//!   third of the lease.
//! * `{tandem:CLUSTER}:draining` — set of shard ids being drained (kept out of the ring).
//! * `{tandem:CLUSTER}:ring` — hash `{version, members}`: the ring the cluster agreed on.
//!
//! [`Membership::sync`] runs one Lua script (atomic in Redis): the live members are those with a lease
//! that are not draining; if that list differs from the stored ring, the version is bumped to
//! `max(version + 1, Redis TIME in ms)` (monotonic even across a Redis restart that lost every key) and
//! stored. Every gateway and shard calls it on a short period, so they all read the same
//! `(version, members)` and compute the same [`Ring`](crate::Ring).
//!
//! The decisions a shard process makes about its membership are sans-IO state machines, driven by
//! thin loops in the shard's process (time and Redis answers are inputs):
//! * [`lease::LeaseKeeper`]: when to renew, and what a renewal's answer means (held, lost, taken by
//!   another process);
//! * [`member::ShardMember`]: what the shard serves (the [`Ownership`](crate::Ownership) it
//!   publishes), which keys it must give up, when a drain is finished, when it must stop.

pub mod lease;
pub mod member;
mod redis;

pub use self::redis::{parse_members, Error, Lease, MemberInfo, Membership, View};
