//! Rate-limited warnings for events that an outsider can repeat at will: payloads
//! written straight into Redis that are invalid or too large, stream entries that
//! cannot be published. Each such event is counted in a metric by its caller; a log
//! line each would let anyone with Redis access flood the node's logs (issue 26.5:
//! 5,000 invalid payloads a second gave 50,020 WARN lines in 10 s).
//!
//! [`LogLimit`] lets the first event of a burst be logged in full and counts the rest;
//! [`LogLimit::run`] then writes at most one summary line per interval, with how many
//! were not logged and the last reason. The decisions take the time as an argument
//! (the `*_at` methods), so they are tested without waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// At most one line per this interval, per limiter.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// A reason is cut to this many bytes in a log line: reasons quote what the sender
/// wrote (a channel name, a field), and a sender must not choose the size of our lines.
pub const MAX_REASON_BYTES: usize = 200;
/// How often [`LogLimit::run`] looks for a summary to write: a summary is at most this
/// late past its interval.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One kind of repeatable warning (one limiter per kind, so that a flood of one kind
/// never hides the first line of another).
pub struct LogLimit {
    /// What the summary line says was not logged, e.g. "invalid backplane payloads".
    what: Box<str>,
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// When the last line (full or summary) was written.
    last_line: Option<Instant>,
    /// Events counted but not logged since then.
    suppressed: u64,
    last_reason: String,
}

/// What a summary line reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub suppressed: u64,
    pub last_reason: String,
    /// Since the previous line.
    pub over: Duration,
}

impl LogLimit {
    pub fn new(what: impl Into<Box<str>>, interval: Duration) -> Self {
        Self {
            what: what.into(),
            interval,
            state: Mutex::default(),
        }
    }

    /// Notes one event. `Some(n)`: log this one in full (with `n`, the events not
    /// logged since the previous line and not yet summed up, usually 0). `None`: it
    /// was counted for the next summary; log nothing.
    pub fn admit(&self, reason: &str) -> Option<u64> {
        self.admit_at(Instant::now(), reason)
    }

    pub fn admit_at(&self, now: Instant, reason: &str) -> Option<u64> {
        let mut s = self.lock();
        if s.last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval)
        {
            s.last_line = Some(now);
            return Some(std::mem::take(&mut s.suppressed));
        }
        s.suppressed += 1;
        // Reuses the buffer: a flood costs no allocation per event.
        s.last_reason.clear();
        s.last_reason.push_str(clip(reason));
        None
    }

    /// The summary due at `now`: events were not logged and the interval since the
    /// last line has passed. Taking it counts as a line.
    pub fn summary_at(&self, now: Instant) -> Option<Summary> {
        let mut s = self.lock();
        let last = s.last_line?;
        let over = now.saturating_duration_since(last);
        if s.suppressed == 0 || over < self.interval {
            return None;
        }
        s.last_line = Some(now);
        Some(Summary {
            suppressed: std::mem::take(&mut s.suppressed),
            last_reason: std::mem::take(&mut s.last_reason),
            over,
        })
    }

    /// Whatever was not logged yet, interval or not (at shutdown, so that no count is
    /// lost from the logs).
    pub fn remainder_at(&self, now: Instant) -> Option<Summary> {
        let mut s = self.lock();
        if s.suppressed == 0 {
            return None;
        }
        let over = s
            .last_line
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        s.last_line = Some(now);
        Some(Summary {
            suppressed: std::mem::take(&mut s.suppressed),
            last_reason: std::mem::take(&mut s.last_reason),
            over,
        })
    }

    /// Writes the summaries as they fall due, and the remainder when `shutdown` fires.
    pub async fn run(self: std::sync::Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY.min(self.interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    if let Some(s) = self.remainder_at(Instant::now()) {
                        self.log(&s);
                    }
                    return;
                }
                _ = tick.tick() => {
                    if let Some(s) = self.summary_at(Instant::now()) {
                        self.log(&s);
                    }
                }
            }
        }
    }

    fn log(&self, s: &Summary) {
        tracing::warn!(
            suppressed = s.suppressed,
            last_reason = %s.last_reason,
            "{}: {} more in the last {:.0?}, counted but not logged one by one",
            self.what,
            s.suppressed,
            s.over
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `reason` cut to [`MAX_REASON_BYTES`] at a character boundary.
pub fn clip(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_is_logged_the_rest_summed_up_once_per_interval() {
        let l = LogLimit::new("things", 10 * S);
        let t0 = Instant::now();
        assert_eq!(l.admit_at(t0, "first"), Some(0));
        // A flood within the interval: counted, not logged, no summary yet.
        for i in 1..=4_999u32 {
            let at = t0 + Duration::from_micros(u64::from(i) * 200);
            assert_eq!(l.admit_at(at, &format!("reason {i}")), None);
        }
        assert_eq!(l.summary_at(t0 + 9 * S), None);
        let s = l
            .summary_at(t0 + 10 * S)
            .expect("a summary after the interval");
        assert_eq!(s.suppressed, 4_999);
        assert_eq!(s.last_reason, "reason 4999");
        assert_eq!(s.over, 10 * S);
        // Taken once; the summary was a line, so the next event waits another interval.
        assert_eq!(l.summary_at(t0 + 11 * S), None);
        assert_eq!(l.admit_at(t0 + 11 * S, "late"), None);
        assert_eq!(l.summary_at(t0 + 19 * S), None);
        assert_eq!(l.summary_at(t0 + 20 * S).map(|s| s.suppressed), Some(1));
    }

    #[test]
    fn a_quiet_interval_lets_the_next_event_through_with_what_was_left() {
        let l = LogLimit::new("things", 10 * S);
        let t0 = Instant::now();
        assert_eq!(l.admit_at(t0, "a"), Some(0));
        assert_eq!(l.admit_at(t0 + S, "b"), None);
        assert_eq!(l.admit_at(t0 + 2 * S, "c"), None);
        // No summary was taken (nobody ran the flusher): the next full line carries
        // the count instead, so nothing is lost.
        assert_eq!(l.admit_at(t0 + 30 * S, "d"), Some(2));
        assert_eq!(l.admit_at(t0 + 41 * S, "e"), Some(0));
        // Nothing suppressed: no summary, however long it has been.
        assert_eq!(l.summary_at(t0 + 100 * S), None);
    }

    #[test]
    fn lines_per_interval_stay_bounded_under_a_steady_flood() {
        // 5,000 events a second for 100 s: the flood, ten times as long.
        let l = LogLimit::new("things", 10 * S);
        let t0 = Instant::now();
        let mut lines = 0;
        for ms in 0..100_000u64 {
            let now = t0 + Duration::from_millis(ms);
            for _ in 0..5 {
                lines += usize::from(l.admit_at(now, "bad").is_some());
            }
            if ms % 1_000 == 0 {
                lines += usize::from(l.summary_at(now).is_some());
            }
        }
        assert!(lines <= 11, "{lines} lines in 100 s");
        assert!(
            lines >= 10,
            "{lines} lines in 100 s: summaries must keep coming"
        );
    }

    #[test]
    fn the_remainder_is_taken_at_shutdown_without_waiting() {
        let l = LogLimit::new("things", 10 * S);
        let t0 = Instant::now();
        assert_eq!(l.remainder_at(t0), None);
        l.admit_at(t0, "a");
        l.admit_at(t0 + S, "b");
        let r = l.remainder_at(t0 + 2 * S).expect("one suppressed");
        assert_eq!((r.suppressed, r.last_reason.as_str()), (1, "b"));
        assert_eq!(l.remainder_at(t0 + 3 * S), None);
    }

    /// Log lines written on this thread, as text.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
            String::from_utf8_lossy(&buf)
                .lines()
                .map(String::from)
                .collect()
        }
    }

    // The current-thread runtime runs `run` on this thread, so a thread-local subscriber
    // sees its lines.
    #[tokio::test]
    async fn run_writes_the_summary_when_due_and_the_remainder_at_shutdown() {
        let logs = Captured::default();
        let writer = logs.clone();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        let interval = Duration::from_millis(500);
        let l = std::sync::Arc::new(LogLimit::new("things", interval));
        assert_eq!(l.admit("a"), Some(0));
        assert_eq!(l.admit("b"), None);
        assert_eq!(l.admit("c"), None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(l.clone().run(stop.clone()));
        // Polled, so that the next event below surely falls within the interval that
        // the summary started.
        let deadline = Instant::now() + 20 * interval;
        while logs.lines().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lines = logs.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("things: 2 more"), "{lines:?}");
        assert!(lines[0].contains("last_reason=c"), "{lines:?}");
        // One more within the interval after that summary: left for the remainder.
        assert_eq!(l.admit("d"), None);
        stop.cancel();
        task.await.expect("run ends");
        let lines = logs.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("things: 1 more"), "{lines:?}");
    }

    #[test]
    fn reasons_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(MAX_REASON_BYTES);
        let c = clip(&long);
        assert!(c.len() <= MAX_REASON_BYTES && c.len() >= MAX_REASON_BYTES - 1);
        assert!(c.chars().all(|ch| ch == 'é'));
        let l = LogLimit::new("things", 10 * S);
        let t0 = Instant::now();
        l.admit_at(t0, "a");
        l.admit_at(t0 + S, &"x".repeat(100_000));
        let s = l.summary_at(t0 + 10 * S).expect("summary");
        assert_eq!(s.last_reason.len(), MAX_REASON_BYTES);
    }
}
