//! What one `Client::call` costs the calling thread in heap allocations,
//! counted by a global allocator, so that a change that adds copies or
//! buffers to the fast path shows up here.
//!
//! The budget: the socket path, the response frame buffer, and the returned
//! body (the request head buffer is reused between calls).
//!
//! `unsafe` lives in the `sys` module alone (the counting allocator).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::net::UnixListener;

use charon_client::Client;
use charon_protocol::{
    decode_request, encode_response, Fill, FrameBuf, FrameKind, Limits, Response,
};

/// The system allocator, counting this thread's allocations while asked.
mod sys {
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting;

    static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

    thread_local! {
        static COUNTING: Cell<bool> = const { Cell::new(false) };
    }

    // SAFETY: every call is forwarded unchanged to the system allocator; the
    // counter only reads a thread-local flag, which does not allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if COUNTING.with(Cell::get) {
                ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: the caller's layout contract is passed on as is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if COUNTING.with(Cell::get) {
                ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: as for `dealloc`, and the caller guarantees `new_size`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f` and returns its result with the number of allocations
    /// (and reallocations) this thread made meanwhile.
    pub fn allocations_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        let out = f();
        COUNTING.with(|c| c.set(false));
        (out, ALLOCATIONS.load(Ordering::Relaxed))
    }
}

#[test]
fn one_call_allocates_at_most_three_times() {
    let dir = tempfile::Builder::new()
        .prefix("cc")
        .tempdir_in("/tmp")
        .unwrap();
    let listener = UnixListener::bind(dir.path().join("cost.f.0.raw.sock")).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..3 {
            let (mut conn, _) = listener.accept().unwrap();
            let mut fb = FrameBuf::new(FrameKind::Request, 1 << 20);
            assert_eq!(fb.read_from(&mut conn).unwrap(), Fill::Complete);
            let req = decode_request(fb.payload(), &Limits::default()).unwrap();
            let mut out = Vec::new();
            encode_response(&Response::Ok(req.body), &Limits::default(), &mut out).unwrap();
            conn.write_all(&out).unwrap();
        }
    });
    let mut client = Client::builder()
        .run_dir(dir.path())
        .name("cost")
        .build()
        .unwrap();
    // The first call sizes the reused head buffer.
    assert_eq!(client.call("cost.f.0.raw", b"warm").unwrap(), b"warm");
    let mut counts = Vec::new();
    for _ in 0..2 {
        let (body, n) = sys::allocations_during(|| client.call("cost.f.0.raw", b"ping"));
        assert_eq!(body.unwrap(), b"ping");
        counts.push(n);
    }
    server.join().unwrap();
    eprintln!("allocations per call: {counts:?}");
    assert!(counts.iter().all(|&n| n <= 3), "{counts:?}");
}
