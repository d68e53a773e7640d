//! A fair share of the workers for every client group (README "Concurrency"): which group a
//! request belongs to (`client_key`), which waiting request a free worker takes next, whether a
//! kept connection may skip the queue, which queued request a full queue gives up for a
//! newcomer, and what one group may hold (`max_client_requests`). Pure: the job queue
//! (`pool/queue.rs`) holds a `Fair` under its lock and drives it; nothing here blocks or wakes.
//!
//! Each group has its own first-come-first-served line and a count of its requests in workers.
//! A free worker takes the oldest request of the waiting group with the fewest in workers (ties:
//! the group served longest ago). With one group this is exactly one FIFO line.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::ClientKey;
use crate::http::parse::RequestHead;

/// The longest header value kept as a group's name; longer ones are cut (their groups merge).
const MAX_KEY: usize = 128;
/// How many emptied lines are kept for reuse: a group coming and going allocates nothing.
const SPARE_LINES: usize = 16;
/// `Retry-After` (seconds) of a 429 `client_limit`: one of the group's requests ends soon.
pub const CLIENT_LIMIT_RETRY_AFTER: u64 = 1;

/// A client group: everyone (`none`), one address (`ip`), or one header value (`header:NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    All,
    Ip(IpAddr),
    Key(Arc<str>),
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Group::All => f.write_str("all"),
            Group::Ip(ip) => write!(f, "{ip}"),
            Group::Key(k) => f.write_str(k),
        }
    }
}

/// The group of a request from `peer` under `key`; a request without the header (or with an
/// empty one) falls back to its address.
pub fn group_of(key: &ClientKey, head: &RequestHead, peer: IpAddr) -> Group {
    match key {
        ClientKey::None => Group::All,
        ClientKey::Ip => Group::Ip(peer),
        ClientKey::Header(name) => match head.header(name).map(<[u8]>::trim_ascii) {
            Some(v) if !v.is_empty() => {
                let v = &v[..v.len().min(MAX_KEY)];
                Group::Key(String::from_utf8_lossy(v).into())
            }
            _ => Group::Ip(peer),
        },
    }
}

/// One group's line and its requests in workers.
struct Line<T> {
    running: usize,
    waiting: VecDeque<T>,
    /// The turn this group was last served in (ties go to the group served longest ago).
    served: u64,
}

/// What a group holds now (`/proxy-metrics` `top_groups`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    pub group: Group,
    pub in_flight: usize,
    pub queued: usize,
}

/// Every group with a request in a worker or waiting; a group is forgotten when it has neither.
pub struct Fair<T> {
    groups: HashMap<Group, Line<T>>,
    queued: usize,
    turn: u64,
    spare: Vec<VecDeque<T>>,
}

impl<T> Default for Fair<T> {
    fn default() -> Self {
        Fair {
            groups: HashMap::new(),
            queued: 0,
            turn: 0,
            spare: Vec::new(),
        }
    }
}

impl<T> Fair<T> {
    /// Requests waiting, all groups together.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Groups with a request in a worker or waiting.
    pub fn active(&self) -> usize {
        self.groups.len()
    }

    /// Requests of `group` in workers and waiting (what `max_client_requests` caps).
    pub fn load(&self, group: &Group) -> usize {
        self.groups
            .get(group)
            .map_or(0, |l| l.running + l.waiting.len())
    }

    fn line(&mut self, group: Group) -> &mut Line<T> {
        let spare = &mut self.spare;
        self.groups.entry(group).or_insert_with(|| Line {
            running: 0,
            waiting: spare.pop().unwrap_or_default(),
            served: 0,
        })
    }

    /// Puts `item` at the back of its group's line.
    pub fn push(&mut self, group: Group, item: T) {
        self.line(group).waiting.push_back(item);
        self.queued += 1;
    }

    /// The group a free worker serves next: of the groups with a request waiting, the one with
    /// the fewest in workers; ties to the one served longest ago.
    pub fn next(&self) -> Option<&Group> {
        self.groups
            .iter()
            .filter(|(_, l)| !l.waiting.is_empty())
            .min_by_key(|(_, l)| (l.running, l.served))
            .map(|(g, _)| g)
    }

    /// Takes the oldest request of the next group (`next`), counted in a worker until `done`.
    pub fn pop(&mut self) -> Option<(Group, T)> {
        let group = self.next()?.clone();
        self.turn += 1;
        let turn = self.turn;
        let line = self.groups.get_mut(&group)?;
        let item = line.waiting.pop_front()?;
        line.running += 1;
        line.served = turn;
        self.queued -= 1;
        Some((group, item))
    }

    /// True if a worker done with a request of `group` may serve that connection's next request
    /// itself, skipping the queue: no other group waits with fewer in workers (the rule `pop`
    /// follows). The caller counts the request with `enter`.
    pub fn may_keep(&self, group: &Group) -> bool {
        let running = self.groups.get(group).map_or(0, |l| l.running);
        !self
            .groups
            .iter()
            .any(|(g, l)| g != group && !l.waiting.is_empty() && l.running < running)
    }

    /// A request of `group` goes to a worker without waiting (a kept connection's).
    pub fn enter(&mut self, group: Group) {
        self.line(group).running += 1;
    }

    /// A request of `group` left its worker; the group is forgotten if nothing else of it is
    /// in a worker or waiting.
    pub fn done(&mut self, group: &Group) {
        let Some(line) = self.groups.get_mut(group) else {
            return;
        };
        line.running = line.running.saturating_sub(1);
        if line.running == 0 && line.waiting.is_empty() {
            self.forget(group);
        }
    }

    fn forget(&mut self, group: &Group) {
        if let Some(line) = self.groups.remove(group) {
            if self.spare.len() < SPARE_LINES {
                self.spare.push(line.waiting);
            }
        }
    }

    /// The queue is full and a request of `newcomer` arrives: if that group holds less than its
    /// share of the waiting requests (an equal part for each group waiting, the newcomer's
    /// included), the newest waiting request of the group holding the most is given up
    /// (returned, for its 503 `queue_full`) to make room. Otherwise nothing: the newcomer is
    /// refused. A request in a worker is never given up.
    pub fn evict_for(&mut self, newcomer: &Group) -> Option<T> {
        let mine = self.groups.get(newcomer).map_or(0, |l| l.waiting.len());
        let waiting_groups = self
            .groups
            .values()
            .filter(|l| !l.waiting.is_empty())
            .count();
        let groups = waiting_groups + usize::from(mine == 0);
        if mine * groups >= self.queued {
            return None; // its share or more (or nothing waits)
        }
        let largest = self
            .groups
            .iter()
            .filter(|(g, _)| *g != newcomer)
            .max_by_key(|(_, l)| l.waiting.len())
            .map(|(g, _)| g.clone())?;
        let line = self.groups.get_mut(&largest)?;
        let item = line.waiting.pop_back()?;
        self.queued -= 1;
        if line.running == 0 && line.waiting.is_empty() {
            self.forget(&largest);
        }
        Some(item)
    }

    /// The `n` groups holding the most (in workers + waiting), most first.
    pub fn top(&self, n: usize) -> Vec<Load> {
        let mut all: Vec<Load> = self
            .groups
            .iter()
            .map(|(g, l)| Load {
                group: g.clone(),
                in_flight: l.running,
                queued: l.waiting.len(),
            })
            .collect();
        all.sort_by(|a, b| {
            (b.in_flight + b.queued)
                .cmp(&(a.in_flight + a.queued))
                .then_with(|| a.group.to_string().cmp(&b.group.to_string()))
        });
        all.truncate(n);
        all
    }
}

#[cfg(test)]
#[path = "fair_tests.rs"]
mod tests;
