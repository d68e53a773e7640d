//! `sluice-upstream`: the fault-injecting test upstream as a command, for the demo, the benchmark
//! and manual testing. See `sluice_tools::upstream` for the query parameters it understands.

use argh::FromArgs;

#[derive(FromArgs)]
/// A real HTTP/1.1 test upstream whose answer each request chooses with query parameters
/// (status, delay_ms, body_bytes, chunked, echo, reset, hang, ...).
struct Args {
    /// listen address (default 127.0.0.1:9000; port 0 picks one and prints it)
    #[argh(option, default = "String::from(\"127.0.0.1:9000\")")]
    listen: String,
    /// do not keep a record of received requests (for benchmarks)
    #[argh(switch)]
    no_record: bool,
}

fn main() {
    let args: Args = argh::from_env();
    match sluice_tools::upstream::TestUpstream::start_on(&args.listen, !args.no_record) {
        Ok(up) => {
            println!("sluice-upstream listening on {}", up.addr());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("sluice-upstream: cannot listen on {}: {e}", args.listen);
            std::process::exit(2);
        }
    }
}
