//! `charon ping`: Pluton's plPing. Sends random bodies to an echo service,
//! checks every echo, and reports the rate and latency percentiles. At
//! `-p 1` each request is one `Client::call`, the call a program makes;
//! above, PARALLEL requests are kept in flight through one batch.
//!
//! The client library does the I/O; this module only schedules requests
//! and summarises samples.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use charon_client::{Client, Error, Request};

use super::common::{client, parse_pause, parse_seconds};
use super::{status, status_of, Failure};

/// A batch is replaced once it has carried this many requests, so that a
/// long run does not keep every request body.
const REQUESTS_PER_BATCH: usize = 1024;

/// Send echo requests and report the rate and latency.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run dir holding the services' sockets [default: as for send].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Number of requests to send.
    #[arg(short = 'c', value_name = "COUNT", default_value_t = 10)]
    count: u64,
    /// Requests kept in flight at once.
    #[arg(short = 'p', value_name = "PARALLEL", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    parallel: u32,
    /// Size of each random body, in bytes.
    #[arg(short = 's', value_name = "SIZE", default_value_t = 64)]
    size: u32,
    /// Pause between the starts of two requests, in seconds.
    #[arg(short = 'i', value_name = "SECONDS", value_parser = parse_pause, default_value = "0")]
    interval: Duration,
    /// Give up on a request after SECONDS [default: 4].
    #[arg(short = 't', value_name = "SECONDS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// The echo service to ping.
    #[arg(default_value = "system.echo.0.raw")]
    key: String,
}

/// What a run measured.
#[derive(Debug, Default)]
struct Tally {
    count: u64,
    errors: u64,
    samples_us: Vec<u64>,
    first_error: Option<(u8, String)>,
}

impl Tally {
    fn error(&mut self, status: u8, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert((status, message));
    }

    /// True when the next request cannot fare better: the key is invalid
    /// or no service has it.
    fn hopeless(&self) -> bool {
        matches!(&self.first_error, Some((s, _)) if *s == status::NOT_FOUND || *s == status::USAGE)
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    if args.count == 0 {
        return Err(Failure::usage("-c COUNT must be at least 1"));
    }
    let mut client = client(args.run_dir.clone(), args.timeout)?;
    let timeout = client.timeout();
    let mut rng = Rng::seeded();
    let mut tally = Tally::default();
    let started = Instant::now();
    if args.parallel == 1 {
        run_serial(&mut client, &args, &mut rng, &mut tally);
    } else {
        while tally.count < args.count && !tally.hopeless() {
            run_batch(&mut client, &args, timeout, &mut rng, &mut tally)?;
        }
    }
    let elapsed = started.elapsed();
    // A line of nothing but failures says nothing the error does not; the
    // JSON object is for scripts, which want it whatever happened.
    if args.json || !tally.samples_us.is_empty() {
        report(&args, &mut tally, elapsed);
    }
    match tally.first_error {
        None => Ok(()),
        Some((status, first)) if tally.errors == tally.count => Err(Failure::new(status, first)),
        Some((status, first)) => Err(Failure::new(
            status,
            format!(
                "{} of {} requests failed; first: {first}",
                tally.errors, tally.count
            ),
        )),
    }
}

/// One request at a time: exactly the call a program makes with
/// [`Client::call`], timed around it, so that ping measures what the
/// library costs and no more.
fn run_serial(client: &mut Client, args: &Args, rng: &mut Rng, tally: &mut Tally) {
    let mut next_start = Instant::now();
    while tally.count < args.count && !tally.hopeless() {
        pace(args.interval, &mut next_start);
        let body = rng.bytes(args.size as usize);
        let start = Instant::now();
        let outcome = client.call(&args.key, &body);
        let elapsed = start.elapsed();
        let index = tally.count;
        tally.count += 1;
        check(Some(outcome), &body, index, elapsed, tally);
    }
}

/// Sleeps until `next_start`, then sets the next one `interval` later.
fn pace(interval: Duration, next_start: &mut Instant) {
    if interval.is_zero() {
        return;
    }
    let now = Instant::now();
    if *next_start > now {
        std::thread::sleep(*next_start - now);
    }
    *next_start = Instant::now() + interval;
}

/// Runs requests through one batch until it has carried
/// [`REQUESTS_PER_BATCH`] or the count is reached, and every one finished.
fn run_batch(
    client: &mut Client,
    args: &Args,
    timeout: Duration,
    rng: &mut Rng,
    tally: &mut Tally,
) -> Result<(), Failure> {
    let mut batch = client.batch();
    let mut starts: Vec<Instant> = Vec::new();
    let mut in_flight = 0u32;
    let mut next_start = Instant::now();
    loop {
        while in_flight < args.parallel
            && tally.count < args.count
            && batch.len() < REQUESTS_PER_BATCH
        {
            if tally.hopeless() {
                break;
            }
            pace(args.interval, &mut next_start);
            let body = rng.bytes(args.size as usize);
            // Timed from before `add`: it already connects and sends, and a
            // fast service may even have answered by the time it returns.
            let start = Instant::now();
            let id = batch.add(Request::new(args.key.clone(), body))?;
            // Each start gives the requests in flight a fresh clock, so the
            // timeout bounds each request, not the whole run.
            batch.set_timeout(timeout);
            debug_assert_eq!(id.index(), starts.len());
            starts.push(start);
            tally.count += 1;
            in_flight += 1;
        }
        let Some(id) = batch.wait_any() else {
            return Ok(());
        };
        in_flight -= 1;
        let elapsed = starts[id.index()].elapsed();
        let sent = batch
            .request(id)
            .map(|r| r.body().to_vec())
            .unwrap_or_default();
        check(batch.take(id), &sent, id.index() as u64, elapsed, tally);
    }
}

fn check(
    outcome: Option<Result<Vec<u8>, Error>>,
    sent: &[u8],
    index: u64,
    elapsed: Duration,
    tally: &mut Tally,
) {
    match outcome {
        Some(Ok(body)) if body == sent => {
            tally
                .samples_us
                .push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        }
        Some(Ok(body)) => tally.error(
            status::OTHER,
            format!(
                "request {index} came back wrong: sent {} bytes, got {} different bytes",
                sent.len(),
                body.len()
            ),
        ),
        Some(Err(e)) => tally.error(status_of(&e), super::message_of(&e)),
        None => tally.error(status::OTHER, format!("request {index} has no result")),
    }
}

/// The value at quantile `q` of sorted samples (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(args: &Args, tally: &mut Tally, elapsed: Duration) {
    tally.samples_us.sort_unstable();
    let s = &tally.samples_us;
    let rps = if elapsed.is_zero() {
        0.0
    } else {
        tally.count as f64 / elapsed.as_secs_f64()
    };
    let (p50, p90, p99, p999) = (
        percentile(s, 0.50),
        percentile(s, 0.90),
        percentile(s, 0.99),
        percentile(s, 0.999),
    );
    let max = s.last().copied().unwrap_or(0);
    if args.json {
        let obj = serde_json::json!({
            "key": args.key,
            "count": tally.count,
            "errors": tally.errors,
            "parallel": args.parallel,
            "size": args.size,
            "rps": (rps * 10.0).round() / 10.0,
            "p50_us": p50,
            "p90_us": p90,
            "p99_us": p99,
            "p999_us": p999,
            "max_us": max,
        });
        println!("{obj}");
    } else {
        println!(
            "{}: {} requests, {} errors, {:.1} req/s; latency us p50 {p50} p90 {p90} p99 {p99} p99.9 {p999} max {max}",
            args.key, tally.count, tally.errors, rps
        );
    }
}

/// xorshift64*: the bodies only need to differ, not to be secret.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let s: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&s, 0.5), 500);
        assert_eq!(percentile(&s, 0.999), 999);
        assert_eq!(percentile(&s, 1.0), 1000);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn random_bodies_have_the_size_and_differ() {
        let mut r = Rng(1);
        let (a, b) = (r.bytes(13), r.bytes(13));
        assert_eq!(a.len(), 13);
        assert_ne!(a, b);
    }
}
