//! Rate limits of connections: the per-connection message rate limit of PROTOCOL
//! §2.3 ([`RateLimiter`]: a token bucket that refills at `messages_per_sec` and holds
//! two seconds' worth; frames beyond it are refused, and a client that keeps sending
//! at more than twice its rate for five seconds is abusive and gets closed with 1008),
//! and the node's rate of new connections ([`ConnectionRate`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long sustained abuse is tolerated before the connection is closed.
const ABUSE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse,
    Abuse,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    capacity: f64,
    tokens: f64,
    refilled: Option<Instant>,
    /// Frames in the current one-second window, and when it started.
    window_start: Option<Instant>,
    window_count: u32,
    /// How many consecutive one-second windows ran above twice the rate.
    hot_windows: u32,
}

impl RateLimiter {
    pub fn new(per_sec: u32) -> Self {
        let rate = per_sec.max(1) as f64;
        Self {
            rate,
            capacity: rate * 2.0,
            tokens: rate * 2.0,
            refilled: None,
            window_start: None,
            window_count: 0,
            hot_windows: 0,
        }
    }

    /// Counts one frame arriving at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        if let Some(last) = self.refilled {
            let gained = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + gained).min(self.capacity);
        }
        self.refilled = Some(now);

        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            let hot = self.window_count as f64 > 2.0 * self.rate;
            // A quiet gap longer than one window ends a streak.
            self.hot_windows = if hot && elapsed < Duration::from_secs(2) {
                self.hot_windows + 1
            } else {
                0
            };
            self.window_start = Some(now);
            self.window_count = 0;
        }
        self.window_count += 1;
        if self.hot_windows as u64 >= ABUSE_WINDOW.as_secs() {
            return Verdict::Abuse;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Allow
        } else {
            Verdict::Refuse
        }
    }
}

/// New connections per second per node, counted in one-second windows, against
/// reconnect storms.
pub struct ConnectionRate {
    per_sec: u32,
    window: Mutex<(Instant, u32)>,
}

impl ConnectionRate {
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    pub fn admit(&self, now: Instant) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0);
        }
        if w.1 >= self.per_sec {
            return false;
        }
        w.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_rate_refuses_beyond_the_window() {
        let r = ConnectionRate::new(3);
        let t = Instant::now();
        assert!((0..3).all(|_| r.admit(t)));
        assert!(!r.admit(t));
        assert!(r.admit(t + Duration::from_secs(1)));
    }

    #[test]
    fn burst_of_two_seconds_then_refusals() {
        let mut r = RateLimiter::new(10);
        let t = Instant::now();
        let allowed = (0..30).filter(|_| r.take(t) == Verdict::Allow).count();
        assert_eq!(allowed, 20);
        // A second later, ten more tokens.
        let t2 = t + Duration::from_secs(1);
        let allowed = (0..30).filter(|_| r.take(t2) == Verdict::Allow).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn sustained_abuse_is_detected_and_normal_use_is_not() {
        let mut r = RateLimiter::new(10);
        let t = Instant::now();
        let mut verdict = Verdict::Allow;
        // 50 frames per second (5x the rate) for seven seconds.
        for i in 0..350u64 {
            verdict = r.take(t + Duration::from_millis(i * 20));
            if verdict == Verdict::Abuse {
                break;
            }
        }
        assert_eq!(verdict, Verdict::Abuse);

        let mut calm = RateLimiter::new(10);
        for i in 0..200u64 {
            // 10 per second: always allowed.
            assert_eq!(
                calm.take(t + Duration::from_millis(i * 100)),
                Verdict::Allow
            );
        }
    }
}
