//! A plain HTTP connection's place under `limits.max_http_connections`, as a request
//! sees it. The listener counts every connection until it ends or is upgraded; a
//! request that turns its connection into a long-lived session without an upgrade
//! (the HTTP streaming transports) gives the place back here, so that such sessions
//! count against `limits.max_connections` only, like WebSocket sessions.

use std::sync::{Arc, Mutex};

type Release = Box<dyn FnOnce() + Send>;

/// Shared by every request of one connection (a request extension).
#[derive(Clone, Default)]
pub struct HttpSlot {
    release: Arc<Mutex<Option<Release>>>,
}

impl HttpSlot {
    /// A slot whose `release` runs `give_back` (once, whoever calls it first).
    pub fn new(give_back: impl FnOnce() + Send + 'static) -> Self {
        Self {
            release: Arc::new(Mutex::new(Some(Box::new(give_back)))),
        }
    }

    /// Gives the connection's place back now; later calls do nothing.
    pub fn release(&self) {
        let give_back = self
            .release
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(f) = give_back {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_slot_is_given_back_once() {
        let n = Arc::new(AtomicUsize::new(0));
        let counter = n.clone();
        let slot = HttpSlot::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let copy = slot.clone();
        slot.release();
        copy.release();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
