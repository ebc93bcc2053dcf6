//! Measures `Client::call` against the floor: the same exchange (connect,
//! write, read, close on the Unix socket) written with no framework, both
//! against the same running service.
//!
//! ```text
//! CHARON_ACCEPT_SOCKET=/tmp/floor/system.echo.0.raw.sock charon-echo &
//! cargo run --release -p charon-client --example call_floor -- /tmp/floor 20000
//! ```
//!
//! It prints the mean and median latency of each and their ratio; it leaves
//! starting the service to the caller.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use charon_client::Client;
use charon_protocol::{encode_request, Attributes, Limits, RequestHead, HEADER_LEN};

const KEY: &str = "system.echo.0.raw";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let run_dir = PathBuf::from(args.next().ok_or("usage: call_floor RUN_DIR [COUNT]")?);
    let count: usize = args.next().map_or(Ok(20_000), |c| c.parse())?;
    let body = [7u8; 64];

    let mut frame = Vec::new();
    let head = RequestHead {
        key: KEY,
        client: "floor",
        attempt: 1,
        attributes: Attributes::NONE,
    };
    encode_request(
        &head,
        &[] as &[(&str, &[u8])],
        &body,
        &Limits::default(),
        &mut frame,
    )?;
    let sock = run_dir.join(format!("{KEY}.sock"));
    let mut buf = vec![0u8; 4096];
    let floor = measure(count, || {
        let mut s = UnixStream::connect(&sock)?;
        s.write_all(&frame)?;
        s.read_exact(&mut buf[..HEADER_LEN])?;
        let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        s.read_exact(&mut buf[HEADER_LEN..HEADER_LEN + len])?;
        Ok(())
    })?;

    let mut client = Client::builder().run_dir(&run_dir).name("floor").build()?;
    let framework = measure(count, || {
        let got = client.call(KEY, &body)?;
        assert_eq!(got, body);
        Ok(())
    })?;

    for (name, (mean, p50)) in [("raw floor", floor), ("Client::call", framework)] {
        println!(
            "{name:>13}: mean {:6.1} us  p50 {:6.1} us",
            us(mean),
            us(p50)
        );
    }
    println!("ratio (mean): {:.2}", us(framework.0) / us(floor.0));
    Ok(())
}

type Exchange<'a> = dyn FnMut() -> Result<(), Box<dyn std::error::Error>> + 'a;

/// Mean and median of `count` runs of `f`, after a warm-up.
fn measure(
    count: usize,
    mut f: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let f: &mut Exchange<'_> = &mut f;
    for _ in 0..count / 10 {
        f()?;
    }
    let mut samples = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    let mean = start.elapsed() / count.max(1) as u32;
    samples.sort_unstable();
    Ok((mean, samples.get(count / 2).copied().unwrap_or_default()))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
