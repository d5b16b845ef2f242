//! When each queued message is worked on next: a pure timetable, no threads and no clock.
//!
//! Times are Unix seconds passed in by the caller. A message is either waiting (with a due
//! time) or running (handed to a worker); it is never handed out twice at once. A message
//! that is queued again while running is run again as soon as its worker finishes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Schedule {
    /// Due times, earliest first; stale entries (superseded or running) are skipped.
    heap: BinaryHeap<Reverse<(u64, String)>>,
    waiting: HashMap<String, u64>,
    /// Running ids, and whether they were queued again meanwhile.
    running: HashMap<String, bool>,
}

impl Schedule {
    /// Wants `id` worked on at `at` (or earlier, if it was already waiting for earlier).
    pub fn add(&mut self, id: &str, at: u64) {
        if let Some(again) = self.running.get_mut(id) {
            *again = true;
            return;
        }
        match self.waiting.get(id) {
            Some(&due) if due <= at => {}
            _ => {
                self.waiting.insert(id.to_string(), at);
                self.heap.push(Reverse((at, id.to_string())));
            }
        }
    }

    pub fn knows(&self, id: &str) -> bool {
        self.waiting.contains_key(id) || self.running.contains_key(id)
    }

    /// Ids due by `now`, now counted as running.
    pub fn take_due(&mut self, now: u64) -> Vec<String> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, id))) = self.heap.pop() else {
                break;
            };
            if self.waiting.get(&id) == Some(&at) {
                self.waiting.remove(&id);
                self.running.insert(id.clone(), false);
                due.push(id);
            }
        }
        due
    }

    /// A worker is done with `id`; `next` is when it wants another go, if ever.
    pub fn finished(&mut self, id: &str, next: Option<u64>, now: u64) {
        let again = self.running.remove(id).unwrap_or(false);
        match (again, next) {
            (true, _) => self.add(id, now),
            (false, Some(at)) => self.add(id, at),
            (false, None) => {}
        }
    }

    /// The earliest due time of a waiting message.
    pub fn next_due(&self) -> Option<u64> {
        self.waiting.values().min().copied()
    }
}

/// The delay before attempt number `attempts + 1`, the last entry of the schedule repeating,
/// spread by up to ±10% with `random` (any u64) so that retries do not come in herds.
pub fn retry_delay(schedule: &[Duration], attempts: u32, random: u64) -> u64 {
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule.get(index).map_or(300, Duration::as_secs).max(1);
    let spread = base / 10;
    if spread == 0 {
        return base;
    }
    base - spread + random % (2 * spread + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_messages_come_out_once_and_in_order() {
        let mut s = Schedule::default();
        s.add("b", 20);
        s.add("a", 10);
        s.add("c", 30);
        assert_eq!(s.take_due(5), Vec::<String>::new());
        assert_eq!(s.take_due(20), ["a", "b"]);
        assert_eq!(s.take_due(20), Vec::<String>::new());
        assert_eq!(s.next_due(), Some(30));
        assert!(s.knows("a") && s.knows("c"));
    }

    #[test]
    fn an_earlier_add_wins_and_a_later_one_is_ignored() {
        let mut s = Schedule::default();
        s.add("a", 50);
        s.add("a", 10);
        s.add("a", 90);
        assert_eq!(s.take_due(10), ["a"]);
        assert_eq!(s.take_due(100), Vec::<String>::new());
    }

    #[test]
    fn running_messages_are_never_handed_out_twice() {
        let mut s = Schedule::default();
        s.add("a", 0);
        assert_eq!(s.take_due(0), ["a"]);
        s.add("a", 0); // queued again while running
        assert_eq!(s.take_due(100), Vec::<String>::new());
        s.finished("a", Some(500), 100);
        assert_eq!(s.take_due(100), ["a"], "rerun at once, not at 500");
        s.finished("a", Some(500), 100);
        assert_eq!(s.take_due(499), Vec::<String>::new());
        assert_eq!(s.take_due(500), ["a"]);
        s.finished("a", None, 500);
        assert!(!s.knows("a"));
    }

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter() {
        let schedule = [
            Duration::from_secs(300),
            Duration::from_secs(600),
            Duration::from_secs(3600),
        ];
        assert_eq!(retry_delay(&schedule, 1, 30), 300);
        assert_eq!(retry_delay(&schedule, 1, 0), 270);
        assert_eq!(retry_delay(&schedule, 1, 60), 330);
        assert_eq!(retry_delay(&schedule, 2, 60), 600);
        // The last delay repeats.
        assert_eq!(retry_delay(&schedule, 9, 360), 3600);
        for r in 0..1000 {
            let d = retry_delay(&schedule, 3, r * 7919);
            assert!((3240..=3960).contains(&d));
        }
        assert_eq!(retry_delay(&[Duration::from_secs(1)], 1, 12345), 1);
    }
}
