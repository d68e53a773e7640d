//! Unit tests of the fair dispatch policy (`fair.rs`).

use super::*;
use crate::http::parse::parse_head;

fn ip(n: u8) -> Group {
    Group::Ip(IpAddr::from([127, 0, 0, n]))
}

fn head(raw: &str) -> RequestHead {
    parse_head(raw.as_bytes(), 65536).unwrap().unwrap().0
}

#[test]
fn one_group_is_served_first_come_first_served() {
    let mut f = Fair::default();
    for i in 0..5 {
        f.push(Group::All, i);
    }
    let order: Vec<_> = std::iter::from_fn(|| f.pop().map(|(_, i)| i)).collect();
    assert_eq!(order, [0, 1, 2, 3, 4]);
    assert_eq!(f.load(&Group::All), 5, "all five in workers");
}

#[test]
fn a_free_worker_takes_the_group_with_the_fewest_in_workers() {
    let mut f = Fair::default();
    for i in 0..10 {
        f.push(ip(2), i); // the greedy client, first
    }
    let (g, first) = f.pop().unwrap();
    assert_eq!((g, first), (ip(2), 0));
    f.push(ip(3), 100);
    f.push(ip(3), 101);
    f.push(ip(4), 200);
    // ip(2) has one in a worker; ip(3) and ip(4) none: they go first, oldest of each.
    let mut next = vec![f.pop().unwrap().1, f.pop().unwrap().1];
    next.sort_unstable();
    assert_eq!(next, [100, 200]);
    // Now each has one in a worker: ties in turn, ip(2) was served longest ago.
    assert_eq!(f.pop().unwrap(), (ip(2), 1));
    assert_eq!(f.pop().unwrap(), (ip(3), 101));
    assert_eq!(f.pop().unwrap(), (ip(2), 2));
    assert_eq!(f.len(), 7);
}

#[test]
fn a_client_alone_gets_every_worker() {
    let mut f = Fair::default();
    for i in 0..8 {
        f.push(ip(2), i);
    }
    for i in 0..8 {
        assert_eq!(f.pop().unwrap().1, i, "work-conserving: no worker idles");
    }
    assert!(f.pop().is_none());
}

#[test]
fn a_group_is_forgotten_when_nothing_of_it_runs_or_waits() {
    let mut f = Fair::default();
    f.push(ip(2), 1);
    f.push(ip(3), 2);
    assert_eq!(f.active(), 2);
    let (g, _) = f.pop().unwrap();
    assert_eq!(f.active(), 2, "one in a worker, one waiting");
    f.done(&g);
    assert_eq!(f.active(), 1);
    let (g, _) = f.pop().unwrap();
    f.done(&g);
    assert_eq!(f.active(), 0);
    f.done(&g); // a stray done is harmless
    f.enter(ip(5));
    assert_eq!(f.load(&ip(5)), 1);
    f.done(&ip(5));
    assert_eq!(f.active(), 0);
}

#[test]
fn a_full_queue_gives_up_the_newest_of_the_largest_group_for_a_group_below_its_share() {
    let mut f = Fair::default();
    for i in 0..6 {
        f.push(ip(2), i);
    }
    f.push(ip(3), 100);
    // 7 waiting, two groups (ip(4) new: three): ip(4) holds 0 < 7/3.
    assert_eq!(f.evict_for(&ip(4)), Some(5), "the greedy group's newest");
    f.push(ip(4), 200);
    // ip(3) holds 1 of 7 with three groups waiting: below its share.
    assert_eq!(f.evict_for(&ip(3)), Some(4));
    f.push(ip(3), 101);
    // The greedy group holds 4 of 7: more than its share; it is refused.
    assert_eq!(f.evict_for(&ip(2)), None);
    // ip(3) holds 2 of 7 with three groups: 2 × 3 < 7, still below.
    assert_eq!(f.evict_for(&ip(3)), Some(3));
    f.push(ip(3), 102);
    // Now 3 of 7: its share; refused.
    assert_eq!(f.evict_for(&ip(3)), None);
    let order: Vec<_> = std::iter::from_fn(|| f.pop().map(|(_, i)| i)).collect();
    assert_eq!(order.len(), 7);
}

#[test]
fn nothing_waiting_means_nothing_to_give_up() {
    let mut f: Fair<u32> = Fair::default();
    f.enter(ip(2));
    assert_eq!(
        f.evict_for(&ip(3)),
        None,
        "a request in a worker is never given up"
    );
    f.push(Group::All, 1);
    assert_eq!(
        f.evict_for(&Group::All),
        None,
        "one group: the newcomer is refused"
    );
}

#[test]
fn a_kept_connection_skips_the_queue_only_if_no_other_group_waits_with_fewer_in_workers() {
    let mut f = Fair::default();
    f.enter(ip(2));
    f.enter(ip(2));
    assert!(f.may_keep(&ip(2)), "nothing waits");
    f.push(ip(2), 1);
    assert!(f.may_keep(&ip(2)), "only its own group waits: as today");
    f.push(ip(3), 2);
    assert!(!f.may_keep(&ip(2)), "ip(3) waits with none in workers");
    f.enter(ip(3));
    f.enter(ip(3));
    assert!(f.may_keep(&ip(2)), "ip(3) has as many in workers");
}

#[test]
fn the_top_groups_are_those_holding_the_most() {
    let mut f = Fair::default();
    for i in 0..3 {
        f.push(ip(2), i);
    }
    f.pop();
    f.push(ip(3), 9);
    let top = f.top(10);
    assert_eq!(
        top[0],
        Load {
            group: ip(2),
            in_flight: 1,
            queued: 2
        }
    );
    assert_eq!(top.len(), 2);
    assert_eq!(f.top(1).len(), 1);
}

#[test]
fn groups_come_from_the_address_a_header_or_nothing() {
    let peer = IpAddr::from([127, 0, 0, 7]);
    let h = head("GET / HTTP/1.1\r\nHost: a\r\nX-Tenant-Id: acme\r\n\r\n");
    let bare = head("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let by = |k: &str| ClientKey::Header(k.into());
    assert_eq!(group_of(&ClientKey::Ip, &h, peer), Group::Ip(peer));
    assert_eq!(group_of(&ClientKey::None, &h, peer), Group::All);
    assert_eq!(
        group_of(&by("x-tenant-id"), &h, peer),
        Group::Key("acme".into())
    );
    assert_eq!(
        group_of(&by("X-Tenant-Id"), &bare, peer),
        Group::Ip(peer),
        "without the header: its address"
    );
    let long = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nT: {}\r\n\r\n",
        "x".repeat(1000)
    );
    let Group::Key(k) = group_of(&by("t"), &head(&long), peer) else {
        panic!("a key")
    };
    assert_eq!(k.len(), MAX_KEY, "bounded");
}

/// `may_keep` + `enter` + `done` of a kept request, 1,000,000 times, with 1, 100 and 1,000
/// groups each holding one request in a worker: nothing waiting, then one waiting per group
/// (docs/ARCHITECTURE.md "Who owns a connection when"). Prints ns/op; asserts no timing.
/// `cargo test --release --lib fair_bench -- --ignored --nocapture`
#[test]
#[ignore]
fn fair_bench_may_keep_enter_done() {
    const OPS: u32 = 1_000_000;
    for waiting in [false, true] {
        for n in [1u32, 100, 1_000] {
            let groups: Vec<Group> = (0..n)
                .map(|i| Group::Ip(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
                .collect();
            let mut f = Fair::default();
            for g in &groups {
                f.enter(g.clone());
                if waiting {
                    f.push(g.clone(), 0u32);
                }
            }
            let t = std::time::Instant::now();
            let mut kept = 0u32;
            for i in 0..OPS {
                let g = &groups[(i % n) as usize];
                if f.may_keep(g) {
                    kept += 1;
                }
                f.enter(g.clone());
                f.done(g);
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(OPS);
            assert_eq!(kept, OPS, "every group has as many in workers");
            println!("fair_bench groups={n:5} waiting={waiting}: {ns:8.1} ns/op");
        }
    }
}

#[test]
fn with_ten_thousand_groups_in_workers_may_keep_and_pop_still_follow_the_rule() {
    let groups: Vec<Group> = (0..10_000u32)
        .map(|i| Group::Ip(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
        .collect();
    let mut f = Fair::default();
    for g in &groups {
        f.enter(g.clone());
    }
    assert!(groups.iter().all(|g| f.may_keep(g)), "nothing waits");
    f.push(ip(2), 0);
    assert!(
        !f.may_keep(&groups[9_999]),
        "ip(2) waits with none in workers"
    );
    assert!(f.may_keep(&ip(2)), "its own group only");
    assert_eq!(f.pop(), Some((ip(2), 0)));
    for (i, g) in groups.iter().enumerate().skip(5_000) {
        f.push(g.clone(), i);
    }
    assert!(f.may_keep(&groups[1]), "every waiting group has as many");
    f.done(&groups[7]);
    assert_eq!(f.active(), 10_000, "groups[7] is forgotten");
    f.done(&groups[6_000]);
    assert!(
        !f.may_keep(&groups[1]),
        "groups[6000] waits with none in workers"
    );
    assert_eq!(f.pop(), Some((groups[6_000].clone(), 6_000)));
    assert!(f.may_keep(&groups[1]));
    let mut served = 0;
    while let Some((g, _)) = f.pop() {
        assert_eq!(f.load(&g), 2, "each served once more while the others wait");
        served += 1;
    }
    assert_eq!(served, 4_999);
    f.check();
}
