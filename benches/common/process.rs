//! This process's own counters, read from `/proc/self` (Linux): resident memory and write volume.

/// Resident memory (`VmRSS` in `/proc/self/status`) in bytes; 0 where it cannot be read.
pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Resident memory in MiB.
pub(crate) fn rss_mib() -> f64 {
    rss_bytes() as f64 / (1 << 20) as f64
}

/// This process's write counters from `/proc/self/io`: bytes passed to `write`-family calls,
/// the number of those calls, and bytes sent to the storage layer.
#[derive(Clone, Copy, Default)]
pub(crate) struct Io {
    pub(crate) wchar: u64,
    pub(crate) syscw: u64,
    pub(crate) write_bytes: u64,
}

pub(crate) fn io() -> Io {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Io {
        wchar: field("wchar:"),
        syscw: field("syscw:"),
        write_bytes: field("write_bytes:"),
    }
}
