//! Cost of recording one request in the metrics (the hot path): `cargo bench --bench metrics`.
//! Prints ns per record, single-threaded and with 8 threads recording at once.

use std::time::{Duration, Instant};

use sluice::observe::metrics::{Metrics, Outcome};

fn per_record(threads: usize, each: u64) -> f64 {
    let m = Metrics::new();
    let t = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            let m = &m;
            s.spawn(move || {
                for n in 0..each {
                    m.record(
                        Outcome::Upstream(200),
                        Duration::from_micros(100 + (n + i as u64) % 5000),
                    );
                    m.record_queue_wait(Duration::from_micros(5));
                }
            });
        }
    });
    t.elapsed().as_nanos() as f64 / (threads as u64 * each) as f64
}

fn main() {
    println!("| threads | ns per request recorded (outcome + response time + queue wait) |");
    println!("|---:|---:|");
    for threads in [1, 2, 8] {
        println!(
            "| {threads} | {:.0} |",
            per_record(threads, 2_000_000 / threads as u64)
        );
    }
}
