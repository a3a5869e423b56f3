//! The merged stream's fan-out: every consumer of the relay (the gRPC service on 4245,
//! the web page, `membrane demo`) subscribes here, and a bounded ring of the latest merged
//! events answers `--last N` and a page that opens late.

use std::collections::VecDeque;
use std::sync::Mutex;

use membrane_api::monitor::Event;
use tokio::sync::broadcast;

/// Fan-out of the merged stream plus a ring of its latest events.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Event>,
    ring: Mutex<VecDeque<Event>>,
    ring_len: usize,
}

impl Hub {
    /// A hub whose subscribers may fall `queue` events behind (then they see
    /// `RecvError::Lagged`) and which remembers the latest `ring_len` events.
    pub fn new(queue: usize, ring_len: usize) -> Self {
        let (tx, _) = broadcast::channel(queue.max(1));
        Self {
            tx,
            ring: Mutex::new(VecDeque::with_capacity(ring_len.min(4096))),
            ring_len,
        }
    }

    /// Sends `e` to every subscriber and keeps it in the ring.
    pub fn publish(&self, e: Event) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if self.ring_len > 0 {
                if ring.len() == self.ring_len {
                    ring.pop_front();
                }
                ring.push_back(e.clone());
            }
        }
        // No subscriber is not an error: the ring still has it.
        let _ = self.tx.send(e);
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The latest `n` events, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let skip = ring.len().saturating_sub(n);
        ring.iter().skip(skip).cloned().collect()
    }

    /// The latest `n` events and a receiver of every later one, with nothing lost or
    /// repeated between them (both taken under the ring's lock).
    pub fn recent_and_subscribe(&self, n: usize) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let skip = ring.len().saturating_sub(n);
        (ring.iter().skip(skip).cloned().collect(), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> Event {
        Event {
            count: n,
            ..Event::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_latest_and_subscribers_see_later_events() {
        let hub = Hub::new(16, 3);
        for n in 0..5 {
            hub.publish(ev(n));
        }
        let counts: Vec<u64> = hub.recent(10).iter().map(|e| e.count).collect();
        assert_eq!(counts, vec![2, 3, 4]);
        assert_eq!(hub.recent(1)[0].count, 4);
        let (last, mut rx) = hub.recent_and_subscribe(2);
        assert_eq!(last.len(), 2);
        hub.publish(ev(9));
        assert_eq!(rx.try_recv().unwrap().count, 9);
    }
}
