//! A complete Charon service in a few lines: it echoes each request's body,
//! or, for the `text` application's functions, transforms it.
//!
//! It shows the whole service API: `Service::init`, the `next_request` loop,
//! reading the key's parts and the context, and answering with `respond` or
//! `fault`. Try it standalone (one request through files) or in accept mode:
//!
//! ```sh
//! cargo build --example echo_service
//! CHARON_ACCEPT_SOCKET=/tmp/echo.sock target/debug/examples/echo_service &
//! ```
//!
//! Under `charond`, name it in a config file's `exec` as any other program:
//! the library finds out by itself which of the three ways it runs in.

use charon_service::{fault, Request, Service};

fn main() {
    let mut svc = match Service::init("system.echo.0.raw") {
        Ok(svc) => svc,
        Err(e) => {
            // One line, and the documented "cannot start" status.
            eprintln!("echo_service: cannot start: {e}");
            std::process::exit(2);
        }
    };
    // `None` means: SIGTERM arrived (after the request in hand was
    // answered), the manager is gone, or the one standalone request is
    // done. Exit 0 in every case.
    loop {
        match svc.next_request() {
            Ok(Some(req)) => {
                if let Err(e) = serve(req) {
                    // The client already got a framework error.
                    eprintln!("echo_service: {e}");
                }
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("echo_service: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn serve(req: Request<'_>) -> Result<(), charon_service::Error> {
    // The body borrows the library's read buffer, not `req`, so it can be
    // handed straight back: the response goes out with no copy.
    let body = req.body();
    if req.application() != "text" {
        return req.respond(body);
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return req.fault(fault::DESERIALIZATION_FAILED, "the body is not UTF-8 text");
    };
    // A wildcard service (`text..1.raw`) dispatches on the function part.
    let out = match req.function() {
        "upper" => text.to_uppercase(),
        "lower" => text.to_lowercase(),
        "repeat" => {
            let times = req
                .context("times")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| (1..=100).contains(n));
            match times {
                Some(n) => text.repeat(n),
                None => {
                    return req.fault(
                        fault::BAD_CONTEXT,
                        "context entry \"times\" must be a number from 1 to 100",
                    )
                }
            }
        }
        other => {
            let msg = format!("function {other:?} is not one of upper, lower, repeat");
            return req.fault(fault::UNKNOWN_FUNCTION, &msg);
        }
    };
    req.respond(out.as_bytes())
}
