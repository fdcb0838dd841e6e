//! `disk`: not a criterion benchmark: a raw 4 KiB write + `fdatasync` loop (1000 times, same
//! block and appending) in the temp directory, run twice (`DISK start`, `DISK end`), the disk's
//! physical limit to read the store's durable figures against. `IDEMSTORE_BENCH=disk,<group>`
//! runs the same probe around `<group>` in that group's own target; `benches/common/mod.rs`
//! gives the environment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::disk_probe;

fn main() {
    common::main("disk", |_, plan| {
        disk_probe(plan, "start");
        disk_probe(plan, "end");
    });
}
