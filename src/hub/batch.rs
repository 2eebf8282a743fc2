//! Write coalescing inside the hub: a plain channel's frames of one tick, framed back
//! to back into one batch that every live subscriber of the channel shares, and the
//! release of that batch on the coalescer's tick ([`super::coalesce`] keeps the list
//! and the timer). Durable frames are never batched.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use bytes::BytesMut;
use tokio_util::sync::CancellationToken;

use super::coalesce::Coalescer;
use super::subscriber::{Route, buffer_frame};
use super::{ChannelState, Fanout, Hub};
use crate::connection::frame::Frame;
use crate::connection::outbox::Flush;

/// Frames of one channel waiting for the coalescer's tick, framed back to back.
pub(super) struct Batch {
    wire: BytesMut,
    messages: usize,
    /// When the node took the batch's first message off the backplane: its wait is
    /// the batch's delivery latency.
    oldest: Instant,
}

impl Batch {
    fn into_frame(self) -> Frame {
        if self.messages == 1 {
            Frame::Framed(self.wire.freeze())
        } else {
            Frame::Batch {
                wire: self.wire.freeze(),
                messages: self.messages,
            }
        }
    }
}

impl Hub {
    /// Coalescing: appends a plain frame to the channel's batch for its live
    /// subscribers (recovering ones buffer it now, as without coalescing). The
    /// returned `queued` counts the deliveries accepted; the metrics count them when
    /// the batch is released.
    pub(super) fn batch(
        &self,
        coalescer: &Coalescer,
        entry: &mut dashmap::mapref::one::RefMut<'_, Arc<str>, ChannelState>,
        frame: &Utf8Bytes,
        since: Instant,
    ) -> Fanout {
        let mut buffered = Fanout::default();
        let mut live = 0;
        for sub in &entry.subscribers {
            match &sub.route {
                Route::Live => live += 1,
                Route::Buffer(buffer) => buffer_frame(buffer, None, frame, &mut buffered),
            }
        }
        self.count(buffered);
        if live == 0 {
            return buffered;
        }
        let batch = entry.batch.get_or_insert_with(|| Batch {
            wire: BytesMut::new(),
            messages: 0,
            oldest: since,
        });
        Frame::append_framed_text(&mut batch.wire, frame);
        batch.messages += 1;
        if coalescer.batch_is_full(batch.messages, batch.wire.len()) {
            let name = entry.key().clone();
            let flushes = self.release_batch_locked(&name, entry);
            coalescer.defer(flushes);
        } else if !entry.listed {
            // Under the guard, so that a tick that takes the list finds this batch.
            entry.listed = true;
            coalescer.list_batch(entry.key().clone());
        }
        Fanout {
            queued: buffered.queued + live,
            ..buffered
        }
    }

    /// Hands `channel`'s batch to its live subscribers' queues and adds the flushes
    /// to write to `flushes`: the coalescer's tick, for the channels it listed.
    pub fn release_batch(&self, channel: &str, flushes: &mut Vec<Flush>) {
        if let Some(mut entry) = self.channels.get_mut(channel) {
            entry.listed = false;
            let released = self.release_batch_locked(channel, &mut entry);
            drop(entry);
            flushes.extend(released);
        }
    }

    /// Queues the channel's batch, if any, for every live subscriber; the caller
    /// holds the guard and writes the flushes once it has released it.
    pub(super) fn release_batch_locked(
        &self,
        channel: &str,
        entry: &mut ChannelState,
    ) -> Vec<Flush> {
        let Some(batch) = entry.batch.take() else {
            return Vec::new();
        };
        let oldest = batch.oldest;
        let wire = batch.into_frame();
        let mut out = Fanout::default();
        let mut flushes = Vec::with_capacity(entry.subscribers.len());
        for sub in &entry.subscribers {
            if let Route::Live = sub.route {
                self.push(channel, sub, &wire, &mut out, &mut flushes);
            }
        }
        if out.queued > 0 {
            // One sample per batch, its oldest message's wait: the tick writes right
            // after releasing (a full batch released early waits for that tick still).
            self.metrics
                .delivery_latency
                .record(oldest.elapsed().as_secs_f64());
        }
        self.count(out);
        flushes
    }

    /// With write coalescing on: releases the listed batches and writes what was
    /// deferred, once per tick, until `stop`; then once more. Returns at once without a
    /// coalescer.
    pub async fn run_coalescing(&self, stop: CancellationToken) {
        let Some(coalescer) = &self.coalescer else {
            return;
        };
        let mut tick = tokio::time::interval(coalescer.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.write_coalesced(),
            }
        }
        self.write_coalesced();
    }

    /// One coalescing tick: releases the listed batches and writes every deferred flush.
    pub fn write_coalesced(&self) {
        let Some(coalescer) = &self.coalescer else {
            return;
        };
        let (channels, mut due) = coalescer.take_due();
        for channel in channels {
            self.release_batch(&channel, &mut due);
        }
        Flush::run_all(due);
    }
}
