//! A fair share of the workers for every client group (README "Concurrency"): which group a
//! request belongs to (`client_key`), which waiting request a free worker takes next, whether a
//! kept connection may skip the queue, which queued request a full queue gives up for a
//! newcomer, and what one group may hold (`max_client_requests`). Pure: the job queue
//! (`pool/queue.rs`) holds a `Fair` under its lock and drives it; nothing here blocks or wakes.
//!
//! Each group has its own first-come-first-served line and a count of its requests in workers.
//! A free worker takes the oldest request of the waiting group with the fewest in workers (ties:
//! the group served longest ago). With one group this is exactly one FIFO line.
//!
//! The decisions taken per request under the queue's lock (`pop`, `may_keep`) cost
//! O(log groups), not a scan of every group: beside the lines, an index holds each waiting
//! group ordered by that rule's key, and the count of waiting requests (`lines::Index`). It
//! cannot drift from the lines by construction: a line's counts are private to `lines`, and
//! change only inside `Lines::apply`, which moves the index with them (docs/ARCHITECTURE.md
//! "Who owns a connection when").

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::ClientKey;
use crate::http::parse::RequestHead;
use lines::{Line, Lines};

/// The longest header value kept as a group's name; longer ones are cut (their groups merge).
const MAX_KEY: usize = 128;
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

/// What a group holds now (`/proxy-metrics` `top_groups`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    pub group: Group,
    pub in_flight: usize,
    pub queued: usize,
}

/// Every group with a request in a worker or waiting; a group is forgotten when it has neither.
pub struct Fair<T> {
    lines: Lines<T>,
    turn: u64,
}

impl<T> Default for Fair<T> {
    fn default() -> Self {
        Fair {
            lines: Lines::default(),
            turn: 0,
        }
    }
}

impl<T> Fair<T> {
    /// Requests waiting, all groups together.
    pub fn len(&self) -> usize {
        self.lines.queued()
    }

    /// Groups with a request in a worker or waiting.
    pub fn active(&self) -> usize {
        self.lines.len()
    }

    /// Requests of `group` in workers and waiting (what `max_client_requests` caps).
    pub fn load(&self, group: &Group) -> usize {
        self.lines
            .get(group)
            .map_or(0, |l| l.running() + l.waiting())
    }

    /// Puts `item` at the back of its group's line.
    pub fn push(&mut self, group: Group, item: T) {
        self.lines.push(group, item);
    }

    /// The group a free worker serves next: of the groups with a request waiting, the one with
    /// the fewest in workers; ties to the one served longest ago (groups never served: to the
    /// one whose line was made first; a group forgotten — nothing in workers or waiting — and
    /// seen again starts as never served). The first entry of the index: O(log groups).
    pub fn next(&self) -> Option<&Group> {
        self.lines.ready().next().map(|(_, g)| g)
    }

    /// Takes the oldest request of the next group (`next`), counted in a worker until `done`.
    pub fn pop(&mut self) -> Option<(Group, T)> {
        let group = self.next()?.clone();
        self.turn += 1;
        let item = self.lines.serve(&group, self.turn)?;
        Some((group, item))
    }

    /// True if a worker done with a request of `group` may serve that connection's next request
    /// itself, skipping the queue: no other group waits with fewer in workers (the rule `pop`
    /// follows). The caller counts the request with `enter`. Looks at the index's first entry
    /// other than `group` (its fewest in workers), at most the second; nothing if none waits.
    pub fn may_keep(&self, group: &Group) -> bool {
        if self.len() == 0 {
            return true;
        }
        let running = self.lines.get(group).map_or(0, Line::running);
        self.lines
            .ready()
            .find(|(_, g)| *g != group)
            .is_none_or(|(fewest, _)| fewest >= running)
    }

    /// A request of `group` goes to a worker without waiting (a kept connection's).
    pub fn enter(&mut self, group: Group) {
        self.lines.enter(group);
    }

    /// A request of `group` left its worker; the group is forgotten if nothing else of it is
    /// in a worker or waiting.
    pub fn done(&mut self, group: &Group) {
        self.lines.done(group);
    }

    /// The queue is full and a request of `newcomer` arrives: if that group holds less than its
    /// share of the waiting requests (an equal part for each group waiting, the newcomer's
    /// included), the newest waiting request of the group holding the most is given up
    /// (returned, for its 503 `queue_full`) to make room. Otherwise nothing: the newcomer is
    /// refused. A request in a worker is never given up. The count of waiting groups is the
    /// index's size; the search for the largest line scans the waiting groups (ties: the one a
    /// free worker would serve last), as it runs only on a full queue.
    pub fn evict_for(&mut self, newcomer: &Group) -> Option<T> {
        let mine = self.lines.get(newcomer).map_or(0, Line::waiting);
        let groups = self.lines.waiting_groups() + usize::from(mine == 0);
        if mine * groups >= self.len() {
            return None; // its share or more (or nothing waits)
        }
        let largest = self
            .lines
            .ready()
            .filter(|(_, g)| *g != newcomer)
            .max_by_key(|(_, g)| self.lines.get(g).map_or(0, Line::waiting))
            .map(|(_, g)| g.clone())?;
        self.lines.give_up_newest(&largest)
    }

    /// The `n` groups holding the most (in workers + waiting), most first.
    pub fn top(&self, n: usize) -> Vec<Load> {
        let mut all: Vec<Load> = self
            .lines
            .iter()
            .map(|(g, l)| Load {
                group: g.clone(),
                in_flight: l.running(),
                queued: l.waiting(),
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

    /// Asserts the index is what a scan of the lines gives.
    #[cfg(test)]
    fn check(&self) {
        self.lines.check();
    }
}

/// The lines and their index, apart so that nothing else can change a line's counts: a line's
/// fields are private here, and every change goes through `Lines::apply`.
mod lines {
    use std::collections::{BTreeMap, HashMap, VecDeque};

    use super::Group;

    /// How many emptied lines are kept for reuse.
    const SPARE_LINES: usize = 16;

    /// A waiting group's key in the index: in workers, turn last served, line id.
    type Place = (usize, u64, u64);

    /// One group's line and its requests in workers.
    pub struct Line<T> {
        running: usize,
        waiting: VecDeque<T>,
        /// The turn this group was last served in (ties go to the group served longest ago).
        served: u64,
        /// Never reused: the last tie-break, and the index's key without the group's name.
        id: u64,
    }

    impl<T> Line<T> {
        pub fn running(&self) -> usize {
            self.running
        }

        pub fn waiting(&self) -> usize {
            self.waiting.len()
        }

        /// Its key in the index while a request of it waits: the dispatch rule's.
        fn place(&self) -> Option<Place> {
            (!self.waiting.is_empty()).then_some((self.running, self.served, self.id))
        }

        fn is_empty(&self) -> bool {
            self.running == 0 && self.waiting.is_empty()
        }
    }

    /// Every group's line, and the index of the waiting ones.
    pub struct Lines<T> {
        groups: HashMap<Group, Line<T>>,
        index: Index,
        spare: Vec<VecDeque<T>>,
        /// The last line's id.
        made: u64,
    }

    /// What the lines add up to, kept in step by `Lines::apply`.
    #[derive(Default, Debug, PartialEq)]
    struct Index {
        /// The groups with a request waiting, in the order a free worker serves them: fewest in
        /// workers, then served longest ago, then the line made first (groups never served tie
        /// on `served`).
        ready: BTreeMap<Place, Group>,
        /// Requests waiting, all lines together.
        queued: usize,
    }

    impl<T> Default for Lines<T> {
        fn default() -> Self {
            Lines {
                groups: HashMap::new(),
                index: Index::default(),
                spare: Vec::new(),
                made: 0,
            }
        }
    }

    impl<T> Lines<T> {
        /// Groups with a line.
        pub fn len(&self) -> usize {
            self.groups.len()
        }

        pub fn get(&self, group: &Group) -> Option<&Line<T>> {
            self.groups.get(group)
        }

        pub fn iter(&self) -> impl Iterator<Item = (&Group, &Line<T>)> {
            self.groups.iter()
        }

        /// The waiting groups with their counts in workers, the one served next first.
        pub fn ready(&self) -> impl Iterator<Item = (usize, &Group)> {
            self.index
                .ready
                .iter()
                .map(|(&(running, _, _), g)| (running, g))
        }

        /// How many groups have a request waiting.
        pub fn waiting_groups(&self) -> usize {
            self.index.ready.len()
        }

        /// Requests waiting, all groups together.
        pub fn queued(&self) -> usize {
            self.index.queued
        }

        /// Puts `item` at the back of `group`'s line.
        pub fn push(&mut self, group: Group, item: T) {
            self.change_or_add(group, |l| l.waiting.push_back(item));
        }

        /// A request of `group` goes to a worker without waiting.
        pub fn enter(&mut self, group: Group) {
            self.change_or_add(group, |l| l.running += 1);
        }

        /// The oldest request of `group`, to a worker, in turn `turn`.
        pub fn serve(&mut self, group: &Group, turn: u64) -> Option<T> {
            self.change(group, |l| {
                let item = l.waiting.pop_front()?;
                l.running += 1;
                l.served = turn;
                Some(item)
            })?
        }

        /// A request of `group` left its worker.
        pub fn done(&mut self, group: &Group) {
            self.change(group, |l| l.running = l.running.saturating_sub(1));
        }

        /// The newest waiting request of `group`, given up.
        pub fn give_up_newest(&mut self, group: &Group) -> Option<T> {
            self.change(group, |l| l.waiting.pop_back())?
        }

        /// Applies `f` to `group`'s line, a new one if it has none.
        fn change_or_add<R>(&mut self, group: Group, f: impl FnOnce(&mut Line<T>) -> R) -> R {
            let Some(line) = self.groups.get_mut(&group) else {
                self.made += 1;
                let mut line = Line {
                    running: 0,
                    waiting: self.spare.pop().unwrap_or_default(),
                    served: 0,
                    id: self.made,
                };
                let (r, empty) = Self::apply(&mut self.index, &group, &mut line, f);
                if empty {
                    self.keep_spare(line);
                } else {
                    self.groups.insert(group, line);
                }
                return r;
            };
            let (r, empty) = Self::apply(&mut self.index, &group, line, f);
            if empty {
                self.forget(&group);
            }
            r
        }

        /// Applies `f` to `group`'s line, if it has one.
        fn change<R>(&mut self, group: &Group, f: impl FnOnce(&mut Line<T>) -> R) -> Option<R> {
            let line = self.groups.get_mut(group)?;
            let (r, empty) = Self::apply(&mut self.index, group, line, f);
            if empty {
                self.forget(group);
            }
            Some(r)
        }

        /// The one place a line changes: its index entry moves with its key, and the count of
        /// waiting requests with its length. Also says whether the line is left empty (nothing
        /// in workers or waiting), for the caller to forget.
        fn apply<R>(
            index: &mut Index,
            group: &Group,
            line: &mut Line<T>,
            f: impl FnOnce(&mut Line<T>) -> R,
        ) -> (R, bool) {
            let (before, waited) = (line.place(), line.waiting.len());
            let r = f(line);
            let after = line.place();
            index.queued = index.queued + line.waiting.len() - waited;
            if before != after {
                let old = before.and_then(|place| index.ready.remove(&place));
                if let Some(place) = after {
                    index
                        .ready
                        .insert(place, old.unwrap_or_else(|| group.clone()));
                }
            }
            (r, line.is_empty())
        }

        /// A group with nothing in workers or waiting is forgotten.
        fn forget(&mut self, group: &Group) {
            if let Some(line) = self.groups.remove(group) {
                self.keep_spare(line);
            }
        }

        /// An emptied line's buffer is kept for reuse: a group coming and going allocates
        /// nothing.
        fn keep_spare(&mut self, line: Line<T>) {
            if self.spare.len() < SPARE_LINES {
                self.spare.push(line.waiting);
            }
        }

        /// Asserts the index is exactly what a scan of the lines gives, and no line is empty.
        #[cfg(test)]
        pub fn check(&self) {
            let scan = Index {
                ready: self
                    .groups
                    .iter()
                    .filter_map(|(g, l)| l.place().map(|place| (place, g.clone())))
                    .collect(),
                queued: self.groups.values().map(|l| l.waiting.len()).sum(),
            };
            assert_eq!(self.index, scan, "the index is the scan's");
            assert!(
                self.groups.values().all(|l| !l.is_empty()),
                "an empty line is forgotten"
            );
        }
    }
}

#[cfg(test)]
#[path = "fair_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "fair_model_tests.rs"]
mod model_tests;
