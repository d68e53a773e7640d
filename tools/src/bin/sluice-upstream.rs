//! `sluice-upstream`: the fault-injecting test upstream as a command, for the demo, the benchmark
//! and manual testing. See `sluice_tools::upstream` for the query parameters it understands.

use argh::FromArgs;

#[derive(FromArgs)]
/// A real HTTP/1.1 test upstream whose answer each request chooses with query parameters
/// (status, delay_ms, body_bytes, chunked, echo, reset, hang, ...).
#[argh(note = "Query parameters of any request (combine with &):
  status=N            answer with status N (default 200)
  delay_ms=N          wait N ms before the response head
  wait_ms=N           wait N ms before the response head, ending at once if the peer closes
  hold_body_ms=N      wait N ms before reading the request body
  body_bytes=N        a body of N bytes (default: ok)
  chunked=1           chunked body; no_length=1: close-delimited body
  echo=1              JSON of what was received (method, target, headers, body length, hash)
  echo_body=1         the request body streamed back
  header=Name:Value   an extra response header (repeatable)
  close_mid_body=1    half the body, then close (reset_mid_body=1: reset; stall_mid_body=1: silence)
  reset=1 / close=1   reset / close instead of answering; hang=1: never answer
  garbage=1           a non-HTTP answer; big_header=N: a response header of N bytes
  drop_after=1        close after the response without saying so (a stale pooled connection)
  fail_first=1        a bodiless 503 the first time this target is seen (retries then succeed)
Control paths: /__upstream/fail?status=N (every later request answers N; 0 clears),
/__upstream/delay?ms=N (every later request waits N ms), /__upstream/hang?on=1 (every later
request is never answered; on=0 clears), /__upstream/health?status=N (/health answers N; 0
clears), /__upstream/stats (counts).
Example: curl 'localhost:8080/x?delay_ms=500&status=503' through sluice.")]
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
