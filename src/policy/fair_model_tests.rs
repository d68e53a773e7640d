//! `Fair` (fair.rs) against a reference model: the scanning rules its index replaced, applied to
//! a long random sequence of pushes, pops, kept requests, ends and evictions. Every decision is
//! compared after each step, and `Fair::check` asserts the index is what a scan of the lines
//! gives.

use std::collections::{HashMap, VecDeque};

use super::*;

/// One group's line in the model.
#[derive(Default)]
struct ModelLine {
    running: usize,
    waiting: VecDeque<u64>,
    served: u64,
    /// The order lines were made in.
    born: u64,
}

/// The rules as a plain scan of every group, as fair dispatch decided before its index. Ties
/// the scan left to the map's order are broken as the index breaks them: `next` to the line
/// made first (groups never served tie on `served`), `evict_for` to the one `next` takes last.
#[derive(Default)]
struct Model {
    groups: HashMap<Group, ModelLine>,
    queued: usize,
    turn: u64,
    made: u64,
}

impl Model {
    fn line(&mut self, group: Group) -> &mut ModelLine {
        let made = &mut self.made;
        self.groups.entry(group).or_insert_with(|| {
            *made += 1;
            ModelLine {
                born: *made,
                ..ModelLine::default()
            }
        })
    }

    fn push(&mut self, group: Group, item: u64) {
        self.line(group).waiting.push_back(item);
        self.queued += 1;
    }

    fn next(&self) -> Option<&Group> {
        self.groups
            .iter()
            .filter(|(_, l)| !l.waiting.is_empty())
            .min_by_key(|(_, l)| (l.running, l.served, l.born))
            .map(|(g, _)| g)
    }

    fn pop(&mut self) -> Option<(Group, u64)> {
        let group = self.next()?.clone();
        self.turn += 1;
        let line = self.groups.get_mut(&group)?;
        let item = line.waiting.pop_front()?;
        line.running += 1;
        line.served = self.turn;
        self.queued -= 1;
        Some((group, item))
    }

    fn may_keep(&self, group: &Group) -> bool {
        let running = self.groups.get(group).map_or(0, |l| l.running);
        !self
            .groups
            .iter()
            .any(|(g, l)| g != group && !l.waiting.is_empty() && l.running < running)
    }

    fn enter(&mut self, group: Group) {
        self.line(group).running += 1;
    }

    fn done(&mut self, group: &Group) {
        let Some(line) = self.groups.get_mut(group) else {
            return;
        };
        line.running = line.running.saturating_sub(1);
        self.forget_if_empty(group);
    }

    fn forget_if_empty(&mut self, group: &Group) {
        if self
            .groups
            .get(group)
            .is_some_and(|l| l.running == 0 && l.waiting.is_empty())
        {
            self.groups.remove(group);
        }
    }

    fn evict_for(&mut self, newcomer: &Group) -> Option<u64> {
        let mine = self.groups.get(newcomer).map_or(0, |l| l.waiting.len());
        let waiting_groups = self
            .groups
            .values()
            .filter(|l| !l.waiting.is_empty())
            .count();
        let groups = waiting_groups + usize::from(mine == 0);
        if mine * groups >= self.queued {
            return None;
        }
        let largest = self
            .groups
            .iter()
            .filter(|(g, _)| *g != newcomer)
            .max_by_key(|(_, l)| (l.waiting.len(), l.running, l.served, l.born))
            .map(|(g, _)| g.clone())?;
        let item = self.groups.get_mut(&largest)?.waiting.pop_back()?;
        self.queued -= 1;
        self.forget_if_empty(&largest);
        Some(item)
    }

    fn load(&self, group: &Group) -> usize {
        self.groups
            .get(group)
            .map_or(0, |l| l.running + l.waiting.len())
    }

    /// The groups with a request in a worker, in a fixed order.
    fn running(&self) -> Vec<Group> {
        let mut all: Vec<(u64, Group)> = self
            .groups
            .iter()
            .filter(|(_, l)| l.running > 0)
            .map(|(g, l)| (l.born, g.clone()))
            .collect();
        all.sort_unstable_by_key(|(born, _)| *born);
        all.into_iter().map(|(_, g)| g).collect()
    }
}

/// xorshift64: a fixed, seeded sequence.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Every decision of `f` equals the model's, and the index is what a scan gives.
fn same(f: &Fair<u64>, m: &Model, groups: &[Group], step: usize) {
    f.check();
    assert_eq!(f.next(), m.next(), "next, step {step}");
    assert_eq!(f.len(), m.queued, "len, step {step}");
    assert_eq!(f.active(), m.groups.len(), "active, step {step}");
    for g in groups {
        assert_eq!(f.may_keep(g), m.may_keep(g), "may_keep {g}, step {step}");
        assert_eq!(f.load(g), m.load(g), "load {g}, step {step}");
    }
}

#[test]
fn the_index_decides_exactly_as_a_scan_of_every_group_over_a_random_run() {
    const STEPS: usize = 20_000;
    const CAPACITY: usize = 12;
    let groups: Vec<Group> = (0..30u8)
        .map(|i| match i % 3 {
            0 if i == 0 => Group::All,
            1 => Group::Key(format!("tenant-{i}").into()),
            _ => Group::Ip(IpAddr::from([10, 0, 0, i])),
        })
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut f, mut m) = (Fair::default(), Model::default());
    let (mut item, mut evicted, mut refused, mut kept, mut not_kept) = (0u64, 0, 0, 0, 0);
    for step in 0..STEPS {
        // A few busy groups and many light ones: the smaller of two draws.
        let g = groups[rng.below(groups.len()).min(rng.below(groups.len()))].clone();
        match rng.below(100) {
            0..=34 => {
                if f.len() >= CAPACITY {
                    let gave_up = f.evict_for(&g);
                    assert_eq!(gave_up, m.evict_for(&g), "evict_for {g}, step {step}");
                    if gave_up.is_none() {
                        refused += 1;
                        continue;
                    }
                    evicted += 1;
                }
                item += 1;
                f.push(g.clone(), item);
                m.push(g, item);
            }
            35..=54 => assert_eq!(f.pop(), m.pop(), "pop, step {step}"),
            55..=64 => {
                let may = f.may_keep(&g);
                assert_eq!(may, m.may_keep(&g), "may_keep {g}, step {step}");
                if may {
                    kept += 1;
                    f.enter(g.clone());
                    m.enter(g);
                } else {
                    not_kept += 1;
                }
            }
            65..=89 => {
                let running = m.running();
                let g = if running.is_empty() || rng.below(20) == 0 {
                    g // sometimes a stray end
                } else {
                    running[rng.below(running.len())].clone()
                };
                f.done(&g);
                m.done(&g);
            }
            _ => {
                let gave_up = f.evict_for(&g);
                assert_eq!(gave_up, m.evict_for(&g), "evict_for {g}, step {step}");
            }
        }
        same(&f, &m, &groups, step);
    }
    for (what, n) in [
        ("evicted", evicted),
        ("refused", refused),
        ("kept", kept),
        ("not kept", not_kept),
    ] {
        assert!(n > 50, "the run exercised each decision: {what} {n}");
    }
}
