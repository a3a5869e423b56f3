//! Merging the nodes' streams in time order: events wait in a bounded reorder window
//! (ordered by their time, then arrival) and leave once they are older than the window,
//! or when the buffer is full (oldest first). Nodes' clocks and delivery delays differ;
//! an event later than the window still goes out, after the ones already sent.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

use membrane_api::monitor::Event;
use tokio::sync::{mpsc, watch};

use crate::discovery::Directory;
use crate::hub::Hub;

/// An event's time, or `fallback` when it has none that parses.
pub fn time_of(e: &Event, fallback: SystemTime) -> SystemTime {
    humantime::parse_rfc3339(&e.time).unwrap_or(fallback)
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Waiting {
    at: SystemTime,
    seq: u64,
    // Not compared beyond (at, seq), which are unique.
    event: OrdEvent,
}

#[derive(Debug, PartialEq, Eq)]
struct OrdEvent(Event);

impl PartialOrd for OrdEvent {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdEvent {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// The reorder buffer.
#[derive(Debug)]
pub struct Reorder {
    heap: BinaryHeap<Reverse<Waiting>>,
    window: Duration,
    max: usize,
    seq: u64,
}

impl Reorder {
    /// Events wait `window`; at most `max` wait at once.
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            window,
            max: max.max(1),
            seq: 0,
        }
    }

    /// Takes `e` in; returns what the full buffer pushes out.
    pub fn push(&mut self, e: Event, now: SystemTime) -> Vec<Event> {
        let at = time_of(&e, now);
        self.seq += 1;
        self.heap.push(Reverse(Waiting {
            at,
            seq: self.seq,
            event: OrdEvent(e),
        }));
        let mut out = Vec::new();
        while self.heap.len() > self.max {
            if let Some(Reverse(w)) = self.heap.pop() {
                out.push(w.event.0);
            }
        }
        out
    }

    /// The events older than the window at `now`, oldest first.
    pub fn ready(&mut self, now: SystemTime) -> Vec<Event> {
        let cut = now
            .checked_sub(self.window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|Reverse(w)| w.at <= cut) {
            if let Some(Reverse(w)) = self.heap.pop() {
                out.push(w.event.0);
            }
        }
        out
    }
}

/// Runs the merge: events from every node's follower in, the merged stream out to `hub`,
/// until every sender is gone.
pub async fn run(
    mut rx: mpsc::Receiver<Event>,
    hub: std::sync::Arc<Hub>,
    mut buf: Reorder,
    directory: watch::Receiver<Directory>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Named as it arrives, with the directory of that moment (a pod gone by the time the
    // window has passed is still named).
    let named = |mut e: Event| {
        directory.borrow().name(&mut e);
        e
    };
    loop {
        tokio::select! {
            e = rx.recv() => match e {
                Some(e) => for out in buf.push(named(e), SystemTime::now()) { hub.publish(out) },
                None => {
                    for out in buf.ready(SystemTime::now() + buf.window) { hub.publish(out) }
                    return;
                }
            },
            _ = tick.tick() => for out in buf.ready(SystemTime::now()) { hub.publish(out) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use membrane_api::monitor::rfc3339;

    fn ev(node: &str, t: SystemTime) -> Event {
        Event {
            node: node.into(),
            time: rfc3339(t),
            ..Event::default()
        }
    }

    #[test]
    fn events_leave_in_time_order_after_the_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = Duration::from_millis;
        let mut r = Reorder::new(ms(500), 100);
        assert!(r.push(ev("b", t0 + ms(30)), t0 + ms(40)).is_empty());
        assert!(r.push(ev("a", t0 + ms(10)), t0 + ms(60)).is_empty());
        assert!(r.push(ev("a", t0 + ms(700)), t0 + ms(700)).is_empty());
        assert!(r.ready(t0 + ms(400)).is_empty());
        let out = r.ready(t0 + ms(600));
        let names: Vec<&str> = out.iter().map(|e| e.node.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(r.ready(t0 + ms(1200)).len(), 1);
    }

    #[test]
    fn a_full_buffer_pushes_the_oldest_out() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = Reorder::new(Duration::from_secs(60), 2);
        r.push(ev("x", t0 + Duration::from_millis(5)), t0);
        r.push(ev("y", t0 + Duration::from_millis(1)), t0);
        let out = r.push(ev("z", t0 + Duration::from_millis(3)), t0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].node, "y");
    }
}
