//! A simulated disk for power-loss tests: it remembers what the last `sync_data` made durable
//! and every write and resize since, loses power after a chosen number of mutating calls, and
//! builds the image a real disk could hold after that power loss.
#![allow(dead_code)]

use std::io;
use std::sync::Arc;

use idemstore::StorageBackend;
use parking_lot::Mutex;

/// A small deterministic PRNG (splitmix64), so that a seed reproduces a case exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// How the disk behaves, and how a crash image is built from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Honest syncs; the image keeps a random subset of the unsynced operations, whole.
    Subset,
    /// Honest syncs; a kept write may also be torn: only some of its 512-byte sectors land.
    Torn,
    /// Negative control: `sync_data` returns Ok but makes nothing durable.
    Lying,
}

/// Sector size for tearing.
pub const SECTOR: u64 = 512;

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl Pending {
    fn apply(&self, image: &mut Vec<u8>) {
        match self {
            Pending::Write { offset, data } => write_at(image, *offset, data),
            Pending::SetLen(len) => image.resize(*len as usize, 0),
        }
    }
}

fn write_at(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(data);
}

/// The power supply, shared by the disks of one simulated machine: a power loss armed on one
/// of them counts the mutating calls of all of them and takes all of them down at once.
#[derive(Debug, Default)]
struct Power {
    /// Mutating calls left before the power goes; `None` when disarmed.
    countdown: Option<u64>,
    /// The power is gone: every call fails.
    dead: bool,
    /// Successful mutating calls so far, on every disk.
    mutations: u64,
}

#[derive(Debug)]
struct State {
    /// The bytes as of the last successful (honest) `sync_data`.
    durable: Vec<u8>,
    /// What reads see.
    live: Vec<u8>,
    /// Writes and resizes since the last sync, in order.
    pending: Vec<Pending>,
    power: Arc<Mutex<Power>>,
    lying: bool,
    /// Successful syncs so far.
    syncs: u64,
}

/// A clonable simulated disk; clones share one state.
#[derive(Debug, Clone)]
pub struct SimDisk(Arc<Mutex<State>>);

fn power_loss() -> io::Error {
    io::Error::other("simulated power loss")
}

impl SimDisk {
    /// An empty disk; `Mode::Lying` makes its syncs lie.
    pub fn new(mode: Mode) -> SimDisk {
        SimDisk::with(Vec::new(), mode == Mode::Lying)
    }

    /// A fresh, honest disk whose durable and live contents are `image`.
    pub fn from_image(image: Vec<u8>) -> SimDisk {
        SimDisk::with(image, false)
    }

    fn with(image: Vec<u8>, lying: bool) -> SimDisk {
        SimDisk::on(Arc::default(), image, lying)
    }

    fn on(power: Arc<Mutex<Power>>, image: Vec<u8>, lying: bool) -> SimDisk {
        SimDisk(Arc::new(Mutex::new(State {
            durable: image.clone(),
            live: image,
            pending: Vec::new(),
            power,
            lying,
            syncs: 0,
        })))
    }

    /// A second disk of the same machine, holding `image`: one power loss takes both down, and
    /// `arm` counts the mutating calls of both. Its syncs lie if this disk's do.
    pub fn sibling(&self, image: Vec<u8>) -> SimDisk {
        let state = self.0.lock();
        SimDisk::on(Arc::clone(&state.power), image, state.lying)
    }

    fn power(&self) -> Arc<Mutex<Power>> {
        Arc::clone(&self.0.lock().power)
    }

    /// Loses power on the `n`-th mutating call from now (`n >= 1`) on this disk or a sibling:
    /// that call and every later call fail.
    pub fn arm(&self, n: u64) {
        assert!(n >= 1);
        self.power().lock().countdown = Some(n);
    }

    /// Makes later syncs lie (or stop lying).
    pub fn set_lying(&self, lying: bool) {
        self.0.lock().lying = lying;
    }

    pub fn disarm(&self) {
        self.power().lock().countdown = None;
    }

    pub fn is_dead(&self) -> bool {
        self.power().lock().dead
    }

    /// Successful mutating calls so far, on this disk and its siblings.
    pub fn mutations(&self) -> u64 {
        self.power().lock().mutations
    }

    pub fn syncs(&self) -> u64 {
        self.0.lock().syncs
    }

    /// The bytes the last honest sync made durable: what the disk holds after a power loss
    /// that keeps none of the later writes.
    pub fn synced_image(&self) -> Vec<u8> {
        self.0.lock().durable.clone()
    }

    /// The bytes reads see now.
    pub fn live_image(&self) -> Vec<u8> {
        self.0.lock().live.clone()
    }

    pub fn pending_ops(&self) -> usize {
        self.0.lock().pending.len()
    }

    /// What the disk could hold after losing power now: the durable image plus, in order,
    /// each pending write with probability 3/4 and each pending resize with probability 1/2.
    /// In `Mode::Torn` a kept write is torn one time in four: each of its 512-byte sectors
    /// lands with probability 1/2.
    pub fn crash_image(&self, rng: &mut Rng, mode: Mode) -> Vec<u8> {
        let state = self.0.lock();
        let mut image = state.durable.clone();
        for op in &state.pending {
            match op {
                Pending::SetLen(_) => {
                    if rng.chance(1, 2) {
                        op.apply(&mut image);
                    }
                }
                Pending::Write { offset, data } => {
                    if !rng.chance(3, 4) {
                        continue;
                    }
                    if mode == Mode::Torn && rng.chance(1, 4) {
                        // Sector boundaries are absolute offsets.
                        let end = offset + data.len() as u64;
                        let mut start = *offset;
                        while start < end {
                            let next = ((start / SECTOR) + 1) * SECTOR;
                            let stop = next.min(end);
                            if rng.chance(1, 2) {
                                let from = (start - offset) as usize;
                                let to = (stop - offset) as usize;
                                write_at(&mut image, start, &data[from..to]);
                            }
                            start = stop;
                        }
                    } else {
                        op.apply(&mut image);
                    }
                }
            }
        }
        image
    }
}

impl State {
    /// Counts down one mutating call; fails it if the power goes now or has gone.
    fn mutate(&mut self) -> io::Result<()> {
        let mut power = self.power.lock();
        if power.dead {
            return Err(power_loss());
        }
        if let Some(n) = power.countdown {
            if n <= 1 {
                power.dead = true;
                power.countdown = None;
                return Err(power_loss());
            }
            power.countdown = Some(n - 1);
        }
        power.mutations += 1;
        Ok(())
    }

    fn dead(&self) -> bool {
        self.power.lock().dead
    }
}

impl StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        let state = self.0.lock();
        if state.dead() {
            return Err(power_loss());
        }
        Ok(state.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.0.lock();
        if state.dead() {
            return Err(power_loss());
        }
        let start = offset as usize;
        let src = state
            .live
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.0.lock();
        state.mutate()?;
        let op = Pending::SetLen(len);
        op.apply(&mut state.live);
        state.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.0.lock();
        state.mutate()?;
        state.syncs += 1;
        if !state.lying {
            // Replaying the pending operations onto the durable image yields the live one,
            // without copying the whole image on every sync.
            let pending = std::mem::take(&mut state.pending);
            for op in &pending {
                op.apply(&mut state.durable);
            }
            debug_assert!(state.durable == state.live);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.0.lock();
        state.mutate()?;
        let op = Pending::Write {
            offset,
            data: data.to_vec(),
        };
        op.apply(&mut state.live);
        state.pending.push(op);
        Ok(())
    }
}

/// The settings of a store opened on simulated disks: `clock`'s time, no background compactor
/// or checkpoint timer, and a small log, so that a run's I/O calls are the workload's.
pub fn disk_config(clock: &idemstore::ManualClock) -> idemstore::ConfigBuilder {
    idemstore::Config::builder()
        .clock(clock.clone())
        .compactor_interval(std::time::Duration::from_secs(3600))
        .checkpoint_interval(std::time::Duration::from_secs(3600))
        .log_capacity(64 << 10)
}

/// A store on the database disk `db`, with the log on `log` or without a log.
pub fn open_on(db: &SimDisk, log: Option<&SimDisk>, config: idemstore::Config) -> idemstore::Store {
    match log {
        Some(log) => idemstore::Store::open_with_backends(db.clone(), log.clone(), config),
        None => idemstore::Store::open_with_backend(db.clone(), config),
    }
    .unwrap()
}
