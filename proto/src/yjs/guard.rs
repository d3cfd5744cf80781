//! Everything that stands between a client's update and yrs, for one
//! document.
//!
//! [`validate`](super::validate) stops every single update that could crash,
//! hang or be misread by yrs 0.28.1. Two hazards remain that depend on what
//! the document already holds, and [`UpdateGuard`] keeps the state for both:
//!
//! * **Re-sent clocks.** yrs trusts that structs re-sent for clocks it has
//!   carry identical content; a re-send with different content segfaults it
//!   (`hostile::yrs_resend_segfault_updates`). Its own state vector cannot
//!   tell, because structs parked as pending (missing dependencies) are not
//!   in it. The guard keeps, per Yjs client, the clock just past the last
//!   struct accepted. An honest client re-sends only what it sent before
//!   (two tabs replaying the same offline state, a full-state sync step 2),
//!   so a fully re-sent update is dropped, keeping its delete set if it has
//!   one. A partly re-sent update cannot be split here, and one that skips
//!   clocks would leave structs pending in yrs, outside its state vector,
//!   where the guard could not see them after a reload: both are refused and
//!   the client resyncs.
//! * **Nesting of shared types**, which yrs recurses on when it deletes or
//!   garbage-collects: see [`NestingTracker`].
//!
//! Per client update, in this order (each step may end it):
//!
//! 1. [`Validated::new`]: the stateless walk, once, which also reads the
//!    clock ranges and the structs the later steps need. The caller then
//!    refuses read-only writers, drops empty updates and may decode.
//! 2. [`UpdateGuard::check`]: the re-send rules; the bytes to store
//!    ([`Accepted`]), or nothing to store. The caller may check its size.
//! 3. [`UpdateGuard::commit`]: the nesting check, then the update is
//!    recorded, all or nothing. It is recorded when accepted, not when
//!    stored, because the client's next update may build on it first; a
//!    store failure must drop the whole guard (the shard drops the document).
//!
//! On load, [`UpdateGuard::from_stored`] rebuilds the state from the
//! snapshot and the stored updates themselves.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use super::nesting::{NestingError, NestingTracker, Parsed};
use super::update::delete_set_update;
use super::validate::{
    extend_ranges, update_client_ranges, walk_update, ClientRange, Limits, Target, UpdateSummary,
    ValidationError,
};

/// Why [`UpdateGuard`] refused an update that passed validation.
///
/// `Display` is short, fixed text that is safe to send to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardError {
    /// Some of the update's clocks were accepted before and some are new:
    /// the client is out of step and should resync.
    Overlap,
    /// The update starts past the clocks accepted for its client: the
    /// client is missing state (or hostile) and should resync.
    Gap,
    /// The nesting check refused the update.
    Nesting(NestingError),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Overlap => f.write_str("update re-sends known clocks"),
            GuardError::Gap => f.write_str("update skips clocks"),
            GuardError::Nesting(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for GuardError {}

/// An update that passed validation (for [`Target::Yrs`]), with what the
/// guard needs from it; step 1.
#[derive(Debug, Clone)]
pub struct Validated<'a> {
    update: &'a [u8],
    summary: UpdateSummary,
    ranges: Vec<ClientRange>,
    structs: Parsed,
}

impl<'a> Validated<'a> {
    /// Validates `update` like
    /// [`validate_update_v1`](super::validate::validate_update_v1), reading
    /// its clock ranges and structs in the same walk.
    pub fn new(update: &'a [u8], limits: &Limits) -> Result<Self, ValidationError> {
        let mut ranges = Vec::new();
        let mut structs = Parsed::default();
        let summary = walk_update(update, limits, Target::Yrs, |s| {
            extend_ranges(&mut ranges, s);
            structs.push(s);
        })?;
        Ok(Validated {
            update,
            summary,
            ranges,
            structs,
        })
    }

    /// The update's bytes.
    pub fn update(&self) -> &'a [u8] {
        self.update
    }

    /// What the update contains.
    pub fn summary(&self) -> UpdateSummary {
        self.summary
    }

    /// True when the update carries no structs and no deletions.
    pub fn is_empty(&self) -> bool {
        self.summary.is_empty
    }

    /// Per client, the clocks its structs cover.
    pub fn ranges(&self) -> &[ClientRange] {
        &self.ranges
    }
}

/// An update the re-send rules let through, possibly trimmed; step 2.
#[derive(Debug, Clone)]
pub struct Accepted<'a> {
    update: Cow<'a, [u8]>,
    ranges: Vec<ClientRange>,
    /// Empty when trimmed to the delete set.
    structs: Parsed,
}

impl Accepted<'_> {
    /// The bytes to store and apply: the update itself, or only its delete
    /// set (see [`is_trimmed`](Self::is_trimmed)).
    pub fn update(&self) -> &[u8] {
        &self.update
    }

    /// True when every struct was a re-send and only the delete set is kept.
    pub fn is_trimmed(&self) -> bool {
        matches!(self.update, Cow::Owned(_))
    }
}

/// The state that protects yrs from update sequences, for one document (see
/// the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateGuard {
    /// Per Yjs client id, the clock just past the last struct accepted.
    ends: HashMap<u64, u64>,
    nesting: NestingTracker,
}

impl UpdateGuard {
    /// The guard of an empty document, refusing shared types nested deeper
    /// than `max_type_depth`.
    pub fn new(max_type_depth: u32) -> Self {
        UpdateGuard {
            ends: HashMap::new(),
            nesting: NestingTracker::new(max_type_depth),
        }
    }

    /// The guard of a loaded document: [`absorb`](Self::absorb) of the
    /// snapshot, then of every stored update in order.
    pub fn from_stored<'u>(
        max_type_depth: u32,
        limits: &Limits,
        stored: impl IntoIterator<Item = &'u [u8]>,
    ) -> Self {
        let mut guard = UpdateGuard::new(max_type_depth);
        for update in stored {
            guard.absorb(update, limits);
        }
        guard
    }

    /// Records a stored update (or snapshot) at load time; never refuses.
    ///
    /// Its clock ranges count only if it passes validation under `limits`
    /// (otherwise it adds none); nesting is recorded as
    /// [`NestingTracker::absorb`] does, which reads what it can.
    pub fn absorb(&mut self, stored: &[u8], limits: &Limits) {
        for r in update_client_ranges(stored, limits).unwrap_or_default() {
            self.record_end(&r);
        }
        self.nesting.absorb(stored);
    }

    /// Applies the re-send rules to a validated update, without changing
    /// the guard; step 2.
    ///
    /// `Ok(None)` means there is nothing to store: the update is empty, or
    /// re-sends only clocks accepted before and deletes nothing. A fully
    /// re-sent update with deletions is trimmed to its delete set.
    pub fn check<'a>(&self, update: Validated<'a>) -> Result<Option<Accepted<'a>>, GuardError> {
        if update.is_empty() {
            return Ok(None);
        }
        let mut covered = 0;
        for r in &update.ranges {
            let known = self.accepted_end(r.client).unwrap_or(0);
            if r.start > known {
                return Err(GuardError::Gap);
            }
            if r.start < known {
                if r.end > known {
                    return Err(GuardError::Overlap);
                }
                covered += 1;
            }
        }
        if covered == 0 {
            return Ok(Some(Accepted {
                update: Cow::Borrowed(update.update),
                ranges: update.ranges,
                structs: update.structs,
            }));
        }
        if covered < update.ranges.len() {
            // Some clients re-send, others send new clocks.
            return Err(GuardError::Overlap);
        }
        if update.summary.delete_ranges == 0 {
            return Ok(None);
        }
        let deletes = delete_set_update(update.update)
            .expect("an update that passed strict validation reads again under lax rules");
        Ok(Some(Accepted {
            update: Cow::Owned(deletes),
            ranges: update.ranges,
            structs: Parsed::default(),
        }))
    }

    /// Runs the nesting check on an accepted update and, if it passes,
    /// records the update; step 3. Returns the bytes to store. On an error
    /// nothing is recorded.
    pub fn commit(&mut self, accepted: Accepted<'_>) -> Result<Vec<u8>, GuardError> {
        let plan = self
            .nesting
            .check_parsed(&accepted.structs)
            .map_err(GuardError::Nesting)?;
        self.nesting.commit(plan);
        for r in &accepted.ranges {
            self.record_end(r);
        }
        Ok(accepted.update.into_owned())
    }

    /// The clock just past the last struct accepted for a Yjs client, if
    /// any was.
    pub fn accepted_end(&self, client: u64) -> Option<u64> {
        self.ends.get(&client).copied()
    }

    /// The nesting state.
    pub fn nesting(&self) -> &NestingTracker {
        &self.nesting
    }

    fn record_end(&mut self, r: &ClientRange) {
        let e = self.ends.entry(r.client).or_insert(0);
        *e = (*e).max(r.end);
    }
}
