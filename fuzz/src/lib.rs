//! What the fuzz targets share: the simulated disk of the crash tests (the same file, so both
//! exercise one model of power loss), a byte source that turns fuzz input into choices, a
//! panic guard, and a digest of what an execution observed, with the check that running an
//! input twice observes the same.
//!
//! The guard exists because libfuzzer-sys aborts on every panic, even one that is caught. The
//! store catches a storage-engine panic on a damaged file and reports `OpenError::Corrupted`
//! (src/open.rs), which is the behaviour under test, not a finding. [`guarded`] therefore
//! lets panics unwind, and aborts (a finding) only when one escapes the code under test to the
//! target, printing its message first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, Once, OnceLock};
use std::task::{Context, Poll, Waker};

#[path = "../../tests/sim_disk.rs"]
pub mod sim_disk;

static HOOK: Once = Once::new();
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Runs one fuzz input; a panic that reaches here is printed and aborts the process (which
/// libFuzzer records as a crash, with the input that caused it).
pub fn guarded(f: impl FnOnce()) {
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let text = format!("{info}");
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = Some(text);
            }
        }));
    });
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        let text = LAST_PANIC.lock().ok().and_then(|mut l| l.take());
        eprintln!(
            "panic escaped to the fuzz target: {}",
            text.unwrap_or_default()
        );
        std::process::abort();
    }
}

/// A digest of what an execution observed (answers, tokens, I/O counts), to check that an
/// input gives one behaviour.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trace(u64);

impl Trace {
    pub fn note(&mut self, value: u64) {
        // splitmix64's finaliser over the running state and the value.
        let mut z = (self.0 ^ value).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }

    pub fn digest(&self) -> u64 {
        self.0
    }
}

/// Runs `run` on `data`. With `IDEMSTORE_FUZZ_TWICE` set in the environment, runs it twice and
/// panics (a finding) if the two digests differ: the execution depended on something other
/// than its input.
pub fn twice(data: &[u8], run: impl Fn(&[u8]) -> u64) {
    static TWICE: OnceLock<bool> = OnceLock::new();
    let first = run(data);
    if *TWICE.get_or_init(|| std::env::var_os("IDEMSTORE_FUZZ_TWICE").is_some()) {
        let second = run(data);
        assert_eq!(
            first, second,
            "the same input observed two behaviours: {first:#x} then {second:#x}"
        );
    }
}

/// The output of `future`, from a store in step mode: its first poll runs the writer until the
/// answer is in, so a future still pending after it is a finding.
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a store in step mode left a future pending after its poll"),
    }
}

/// Reads choices from the fuzz input; zeros once it runs out, so every input is a case.
pub struct Src<'a>(pub &'a [u8]);

impl Src<'_> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u8) -> u8 {
        self.byte() % n
    }

    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
