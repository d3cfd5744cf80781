//! The per-socket message rate, sans-IO: a token bucket. Over the limit the socket's reader waits
//! instead of reading on, which pushes back on the client through TCP flow control: nothing is
//! dropped and the connection stays up.

use std::time::{Duration, Instant};

/// A token bucket of `burst` tokens refilled at `per_sec` (0: unlimited).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(now: Instant, per_sec: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_sec: f64::from(per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token for a message read at `now`: `None` to go on at once, or the instant until
    /// which the reader must wait first (the token is taken either way).
    pub fn take(&mut self, now: Instant) -> Option<Instant> {
        if self.per_sec <= 0.0 {
            return None;
        }
        let now = now.max(self.last);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec)
            .min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return None;
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec);
        // The message goes once the token has refilled: the bucket is empty at that instant.
        self.tokens = 0.0;
        self.last = now + wait;
        Some(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;
    use std::time::{Duration, Instant};

    #[test]
    fn the_burst_passes_then_messages_are_paced() {
        let start = Instant::now();
        let mut b = TokenBucket::new(start, 10, 5);
        for _ in 0..5 {
            assert_eq!(b.take(start), None, "the burst passes without waiting");
        }
        // Each further message waits for its token: 10 more at 10/s end a second later.
        let mut now = start;
        for _ in 0..10 {
            if let Some(until) = b.take(now) {
                now = until;
            }
        }
        let waited = now - start;
        assert!(
            waited >= Duration::from_millis(999) && waited <= Duration::from_millis(1001),
            "{waited:?}"
        );
    }

    #[test]
    fn an_idle_socket_earns_its_burst_back() {
        let start = Instant::now();
        let mut b = TokenBucket::new(start, 10, 5);
        for _ in 0..5 {
            b.take(start);
        }
        assert!(b.take(start).is_some(), "empty");
        let later = start + Duration::from_secs(10);
        for _ in 0..5 {
            assert_eq!(b.take(later), None);
        }
        assert!(b.take(later).is_some(), "never more than the burst");
    }

    #[test]
    fn zero_means_unlimited() {
        let start = Instant::now();
        let mut b = TokenBucket::new(start, 0, 1);
        for _ in 0..1000 {
            assert_eq!(b.take(start), None);
        }
    }
}
