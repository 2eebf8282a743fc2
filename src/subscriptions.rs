//! Interest: the node is subscribed to a channel on the backplane exactly while some
//! local session is (docs/ARCHITECTURE.md decision 3), and a session's `subscribe` is answered
//! only once the backplane confirmed it (the subscribe barrier).
//!
//! Backplane SUBSCRIBE / UNSUBSCRIBE of one channel are serialised by a striped async
//! lock, so an UNSUBSCRIBE for a channel that just lost its last subscriber can never
//! overtake the SUBSCRIBE of a session that joins it a moment later. The last
//! subscriber's departure is acted on after a grace period, so churn costs no Redis
//! round trips.
//!
//! After the backplane reconnects (a new [`Link`] generation), every channel with an
//! entry in the hub is subscribed again; the node reports ready only once that is done.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::backplane::{Backplane, Link};
use crate::error::BackplaneError;
use crate::hub::{Hub, SessionId, Subscriber};
use crate::metrics::Metrics;

const STRIPES: usize = 1024;

pub struct Subscriptions {
    hub: Arc<Hub>,
    backplane: Arc<dyn Backplane>,
    stripes: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
    grace: Duration,
    /// The link generation whose subscriptions are all made again (0: none yet).
    resubscribed: AtomicU64,
    link: tokio::sync::watch::Receiver<Link>,
    metrics: Arc<Metrics>,
}

impl Subscriptions {
    pub fn new(
        hub: Arc<Hub>,
        backplane: Arc<dyn Backplane>,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            hub,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
            grace,
            resubscribed: AtomicU64::new(0),
            link: backplane.link(),
            backplane,
            metrics,
        })
    }

    fn stripe(&self, channel: &str) -> &Mutex<()> {
        &self.stripes[(self.hasher.hash_one(channel) as usize) % STRIPES]
    }

    /// Adds a local subscriber and returns once the node's backplane subscription to
    /// the channel is confirmed. On error the subscriber is removed again.
    pub async fn subscribe(
        self: &Arc<Self>,
        channel: &Arc<str>,
        sub: Subscriber,
    ) -> Result<(), BackplaneError> {
        let session = sub.session;
        // A confirmation from an older link generation is worth nothing.
        let current = self.is_current(*self.link.borrow());
        if self.hub.add(channel, sub) && current {
            return Ok(());
        }
        let result = {
            let _serial = self.stripe(channel).lock().await;
            if self.hub.is_confirmed(channel) && current {
                Ok(())
            } else {
                match self.backplane.subscribe(channel).await {
                    Ok(()) => {
                        self.hub.set_confirmed(channel, true);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if result.is_err() {
            self.unsubscribe(channel, session);
        }
        result
    }

    /// Removes a local subscriber; the backplane subscription follows after the grace
    /// period if nobody else subscribed meanwhile.
    pub fn unsubscribe(self: &Arc<Self>, channel: &Arc<str>, session: SessionId) {
        if self.hub.remove(channel, session) {
            let this = self.clone();
            let channel = channel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(this.grace).await;
                this.release(&channel).await;
            });
        }
    }

    async fn release(&self, channel: &str) {
        let _serial = self.stripe(channel).lock().await;
        if self.hub.remove_if_empty(channel)
            && let Err(e) = self.backplane.unsubscribe(channel).await
        {
            // The link is down; its subscriptions are gone anyway and this channel
            // is no longer in the hub, so the re-subscription will skip it.
            tracing::debug!(channel, error = %e, "unsubscribe failed");
        }
    }

    /// True when every channel with local interest is subscribed on the current link.
    pub fn is_current(&self, link: Link) -> bool {
        link.connected && self.resubscribed.load(Ordering::Acquire) == link.generation
    }

    /// Follows the link: on each new generation, subscribes every channel again.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut link = self.backplane.link();
        loop {
            let now = *link.borrow_and_update();
            if now.connected && self.resubscribed.load(Ordering::Acquire) != now.generation {
                let started = std::time::Instant::now();
                match self.resubscribe_all().await {
                    Ok(n) => {
                        self.resubscribed.store(now.generation, Ordering::Release);
                        let took = started.elapsed();
                        self.metrics.resubscribe_seconds.set(took.as_secs_f64());
                        tracing::info!(
                            channels = n,
                            generation = now.generation,
                            took_ms = took.as_millis() as u64,
                            "backplane subscriptions in place"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-subscribing failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = link.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn resubscribe_all(&self) -> Result<usize, BackplaneError> {
        self.hub.unconfirm_all();
        let names = self.hub.channel_names();
        let refs: Vec<&str> = names.iter().map(|c| &**c).collect();
        self.backplane.subscribe_many(&refs).await?;
        for c in &names {
            if self.hub.contains(c) {
                self.hub.set_confirmed(c, true);
                continue;
            }
            // Released while we re-subscribed: undo our SUBSCRIBE for it.
            let _serial = self.stripe(c).lock().await;
            if !self.hub.contains(c) {
                let _ = self.backplane.unsubscribe(c).await;
            }
        }
        Ok(names.len())
    }
}
