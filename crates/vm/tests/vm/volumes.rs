//! Volumes against a plain byte-array model: random writes, zeroes, trims, flushes, snapshots
//! and power cuts (a simulated disk that keeps only what was synced), then every byte compared.

use std::collections::BTreeMap;
use std::sync::Arc;

use aetherflow_store::local::sim::SimDisk;
use aetherflow_store::local::LocalOptions;
use aetherflow_store::LocalStore;
use aetherflow_vm::{Backend, Error, Span, VirtualMemory, VmConfig};
use proptest::prelude::*;

const CHUNK: u64 = 4096;
const SIZE: u64 = 64 * CHUNK + 1000; // the last chunk is short

fn manager(disk: &SimDisk) -> VirtualMemory {
    let store = LocalStore::open_on(
        Arc::new(disk.clone()),
        LocalOptions {
            pack_size: 256 << 10,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    VirtualMemory::with_store(Arc::new(store), small_config()).unwrap()
}

fn small_config() -> VmConfig {
    let mut config = VmConfig::new(Backend::Memory);
    config.volume_chunk_size = CHUNK as u32;
    config.volume_buffer = 24 << 10; // a few chunks: write-backs happen between flushes
    config.cache_size = 64 << 10;
    config
}

fn flat(spans: Vec<Span>) -> Vec<u8> {
    let mut out = Vec::new();
    for s in spans {
        match s {
            Span::Data(b) => out.extend_from_slice(&b),
            Span::Zeros(n) => out.resize(out.len() + n as usize, 0),
        }
    }
    out
}

fn read_all(vm: &VirtualMemory, name: &str) -> Vec<u8> {
    let v = vm.open_volume(name).unwrap();
    flat(v.read_at(0, v.size() as usize).unwrap())
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: u64, seed: u8 },
    Zeroes { offset: u64, len: u64, punch: bool },
    Trim { offset: u64, len: u64 },
    Flush,
    Snapshot,
    Read { offset: u64, len: u64 },
    PowerCut,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE).prop_flat_map(|offset| (Just(offset), 1..=(SIZE - offset).min(3 * CHUNK + 17)))
}

/// A long write (a stream's), often aligned to the 64 KiB groups whole chunks are stored in.
fn long_range() -> impl Strategy<Value = (u64, u64)> {
    (0u64..4, any::<bool>(), 16u64..=40).prop_map(|(group, aligned, chunks)| {
        let offset = group * 16 * CHUNK + if aligned { 0 } else { 1000 };
        (offset, (chunks * CHUNK).min(SIZE - offset))
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (range(), any::<u8>()).prop_map(|((offset, len), seed)| Op::Write { offset, len, seed }),
        2 => (long_range(), any::<u8>()).prop_map(|((offset, len), seed)| Op::Write { offset, len, seed }),
        2 => (range(), any::<bool>()).prop_map(|((offset, len), punch)| Op::Zeroes { offset, len, punch }),
        1 => range().prop_map(|(offset, len)| Op::Trim { offset, len }),
        2 => Just(Op::Flush),
        1 => Just(Op::Snapshot),
        2 => range().prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => Just(Op::PowerCut),
    ]
}

fn pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8) | 1)
        .collect()
}

/// What the volume must hold: its bytes now, and for each chunk every content it had since
/// the last flush (the first is the flushed one): after a power cut, each chunk must read as
/// one of them.
struct Model {
    bytes: Vec<u8>,
    since_flush: Vec<Vec<Vec<u8>>>,
    snapshots: BTreeMap<String, Vec<u8>>,
}

impl Model {
    fn chunk(&self, i: usize) -> Vec<u8> {
        let start = i * CHUNK as usize;
        self.bytes[start..(start + CHUNK as usize).min(self.bytes.len())].to_vec()
    }

    fn note(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (offset / CHUNK, (offset + len - 1) / CHUNK);
        for i in first..=last {
            let c = self.chunk(i as usize);
            self.since_flush[i as usize].push(c);
        }
    }

    fn flushed(&mut self) {
        for i in 0..self.since_flush.len() {
            self.since_flush[i] = vec![self.chunk(i)];
        }
    }
}

/// Where a store lives across power cuts.
trait Machine {
    fn manager(&self) -> VirtualMemory;
    /// Keeps only what was made durable, as a power cut does (called while the manager is
    /// still open, so that nothing its closing writes counts).
    fn power_cut(&mut self);
}

/// The embedded store on a simulated disk that loses what was not synced.
struct Disk(SimDisk);

impl Machine for Disk {
    fn manager(&self) -> VirtualMemory {
        manager(&self.0)
    }

    fn power_cut(&mut self) {
        self.0 = self.0.power_loss();
    }
}

/// The object-storage backend on an in-memory bucket: what it acknowledged is in the bucket.
struct Bucket(Arc<object_store::memory::InMemory>);

impl Machine for Bucket {
    fn manager(&self) -> VirtualMemory {
        let location: aetherflow_s3::S3Location = "s3://memory/volumes?endpoint=http://127.0.0.1:1"
            .parse()
            .unwrap();
        let store = aetherflow_s3::S3Store::open_on(
            Arc::clone(&self.0) as Arc<dyn object_store::ObjectStore>,
            &location,
            aetherflow_s3::S3Options {
                pack_size: 256 << 10,
                ..aetherflow_s3::S3Options::single_writer()
            },
        )
        .unwrap();
        VirtualMemory::with_store(Arc::new(store), small_config()).unwrap()
    }

    fn power_cut(&mut self) {}
}

fn run(ops: Vec<Op>, machine: &mut dyn Machine) {
    let mut vm = machine.manager();
    vm.create_volume("v", SIZE, None).unwrap();
    let chunks = SIZE.div_ceil(CHUNK) as usize;
    let mut model = Model {
        bytes: vec![0; SIZE as usize],
        since_flush: vec![vec![vec![0; CHUNK as usize]]; chunks],
        snapshots: BTreeMap::new(),
    };
    model.since_flush[chunks - 1] = vec![vec![0; (SIZE % CHUNK) as usize]];
    let mut snapshot = 0;
    for op in ops {
        let volume = vm.open_volume("v").unwrap();
        match op {
            Op::Write { offset, len, seed } => {
                let data = pattern(seed, len);
                volume.write_at(offset, &data, false).unwrap();
                model.bytes[offset as usize..(offset + len) as usize].copy_from_slice(&data);
                model.note(offset, len);
            }
            Op::Zeroes { offset, len, punch } => {
                volume.write_zeroes(offset, len, punch, false).unwrap();
                model.bytes[offset as usize..(offset + len) as usize].fill(0);
                model.note(offset, len);
            }
            Op::Trim { offset, len } => {
                volume.trim(offset, len, false).unwrap();
                // Only whole chunks are deallocated; the ends of the range keep their bytes.
                let first = offset.div_ceil(CHUNK);
                let end = if offset + len == SIZE {
                    SIZE.div_ceil(CHUNK)
                } else {
                    (offset + len) / CHUNK
                };
                for i in first..end {
                    let s = (i * CHUNK) as usize;
                    let e = (s + CHUNK as usize).min(SIZE as usize);
                    model.bytes[s..e].fill(0);
                    model.note(i * CHUNK, 1);
                }
            }
            Op::Flush => {
                volume.flush().unwrap();
                model.flushed();
            }
            Op::Snapshot => {
                drop(volume);
                snapshot += 1;
                let name = format!("s{snapshot}");
                vm.snapshot_volume("v", &name).unwrap();
                // A snapshot writes back what was buffered first: that is durable now.
                model.flushed();
                model.snapshots.insert(name, model.bytes.clone());
            }
            Op::Read { offset, len } => {
                let got = flat(volume.read_at(offset, len as usize).unwrap());
                assert_eq!(got, &model.bytes[offset as usize..(offset + len) as usize]);
                for e in volume.extents(offset, len).unwrap() {
                    assert!(!e.hole || e.zero, "a hole reads as zeros");
                }
            }
            Op::PowerCut => {
                machine.power_cut();
                drop(volume);
                drop(vm);
                vm = machine.manager();
                let got = read_all(&vm, "v");
                for i in 0..chunks {
                    let s = i * CHUNK as usize;
                    let e = (s + CHUNK as usize).min(SIZE as usize);
                    let chunk = &got[s..e];
                    assert!(
                        model.since_flush[i].iter().any(|c| c == chunk),
                        "chunk {i} reads as none of its versions since the last flush"
                    );
                }
                model.bytes = got;
                model.flushed();
            }
        }
    }
    // Everything reads back, the snapshots as they were taken, and the store is clean.
    assert_eq!(read_all(&vm, "v"), model.bytes);
    for (name, bytes) in &model.snapshots {
        assert_eq!(&read_all(&vm, name), bytes, "snapshot {name}");
    }
    let mut damage = Vec::new();
    vm.store().verify(true, &mut |d| damage.push(d)).unwrap();
    assert!(damage.is_empty(), "{damage:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn volumes_behave_like_a_byte_array_through_flushes_snapshots_and_power_cuts(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run(ops, &mut Disk(SimDisk::new()));
    }

    /// The same on the object-storage backend, whose volume maps are the catalog's and the
    /// bucket's (an in-memory bucket: plain `cargo test`, no S3 server).
    #[test]
    fn volumes_on_object_storage_behave_like_a_byte_array(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        run(ops, &mut Bucket(Arc::new(object_store::memory::InMemory::new())));
    }
}

#[test]
fn reads_from_memory_answer_only_what_is_buffered_cached_or_unwritten() {
    let disk = SimDisk::new();
    let vm = manager(&disk);
    vm.create_volume("m", 16 * CHUNK, None).unwrap();
    let v = vm.open_volume("m").unwrap();
    v.write_at(CHUNK + 10, b"buffered", false).unwrap();
    let cached =
        |v: &aetherflow_vm::VolumeHandle, at, len| v.read_cached(at, len).unwrap().map(flat);
    assert_eq!(cached(&v, CHUNK + 10, 8).as_deref(), Some(&b"buffered"[..]));
    // Written back, the chunk stays decoded in the cache.
    v.flush().unwrap();
    assert_eq!(
        cached(&v, CHUNK + 8, 12).as_deref(),
        Some(&b"\0\0buffered\0\0"[..])
    );
    drop(v);
    drop(vm);
    // A new process has it on disk only: that read must go where it may block.
    let vm = manager(&disk);
    let v = vm.open_volume("m").unwrap();
    assert_eq!(cached(&v, CHUNK + 10, 8), None);
    // What was never written is known without reading anything.
    assert_eq!(cached(&v, 5 * CHUNK, 3).as_deref(), Some(&b"\0\0\0"[..]));
    assert_eq!(flat(v.read_at(CHUNK + 10, 8).unwrap()), b"buffered");
    assert_eq!(cached(&v, CHUNK + 10, 8).as_deref(), Some(&b"buffered"[..]));
}

#[test]
fn scans_stay_out_of_the_cache_and_warming_keeps_what_it_reads() {
    let disk = SimDisk::new();
    let vm = manager(&disk);
    vm.create_volume("s", 16 * CHUNK, None).unwrap();
    let v = vm.open_volume("s").unwrap();
    let data = pattern(7, 12 * CHUNK);
    v.write_at(0, &data, false).unwrap();
    v.flush().unwrap();
    drop(v);
    drop(vm);
    let vm = manager(&disk);
    let v = vm.open_volume("s").unwrap();
    let cached = |at: u64| v.read_cached(at * CHUNK, 1).unwrap().is_some();
    // A scan (more than two chunks fetched) reads right and keeps nothing.
    assert_eq!(
        flat(v.read_at(0, 4 * CHUNK as usize).unwrap()),
        data[..4 * CHUNK as usize]
    );
    assert!((0..4).all(|i| !cached(i)));
    // A small read keeps what it fetched.
    v.read_at(4 * CHUNK, 2 * CHUNK as usize).unwrap();
    assert!(cached(4) && cached(5));
    // Warming (NBD_CMD_CACHE) keeps everything it reads, whatever its size.
    v.warm(6 * CHUNK, 4 * CHUNK as usize).unwrap();
    assert!((6..10).all(cached));
    assert!(!cached(10));
}

#[test]
fn chunks_written_whole_together_are_stored_as_one_and_a_patch_splits_one_off() {
    let disk = SimDisk::new();
    let vm = manager(&disk);
    // 16 chunks of 4 KiB make a 64 KiB group; the volume ends in a short group of 2 chunks.
    vm.create_volume("g", 2 * 16 * CHUNK - 14 * CHUNK - 100, None)
        .unwrap();
    let v = vm.open_volume("g").unwrap();
    let mut model = super::noise(v.size() as usize, 7);
    v.write_at(0, &model, false).unwrap();
    v.flush().unwrap();
    let usage = vm.store().volume_usage("g").unwrap();
    assert_eq!(usage.chunks, 2, "one stored chunk per group: {usage:?}");
    assert_eq!(usage.unique, v.size(), "{usage:?}");
    // A patch re-encodes only its own chunk; the rest of the group reads the group's.
    let patch = [0xAB; 300];
    v.write_at(3 * CHUNK + 50, &patch, false).unwrap();
    model[3 * CHUNK as usize + 50..][..300].copy_from_slice(&patch);
    v.flush().unwrap();
    let usage = vm.store().volume_usage("g").unwrap();
    assert_eq!(usage.chunks, 3, "{usage:?}");
    assert_eq!(usage.unique, v.size() + CHUNK, "{usage:?}");
    assert_eq!(flat(v.read_at(0, v.size() as usize).unwrap()), model);
    // Unaligned reads across the group's parts and the patched chunk.
    let at = 2 * CHUNK as usize + 7;
    assert_eq!(
        flat(v.read_at(at as u64, 3 * CHUNK as usize).unwrap()),
        model[at..at + 3 * CHUNK as usize]
    );
    drop(v);
    let reopened = manager(&disk);
    assert_eq!(read_all(&reopened, "g"), model);
    let mut damage = Vec::new();
    reopened
        .store()
        .verify(true, &mut |d| damage.push(d))
        .unwrap();
    assert!(damage.is_empty(), "{damage:?}");
}

#[test]
fn overwrites_between_flushes_leave_only_a_few_packs_of_dead_space() {
    // Write-backs between flushes delete overwritten chunks without an fsync and leave
    // compaction for later, but not for ever: the disk holds the live chunks plus a bounded
    // number of packs of dead ones, however much is overwritten before the flush.
    let disk = SimDisk::new();
    let vm = manager(&disk);
    vm.create_volume("o", 64 * CHUNK, None).unwrap();
    let v = vm.open_volume("o").unwrap();
    let base = disk.bytes();
    let mut last = Vec::new();
    for pass in 0..40 {
        last = super::noise(64 * CHUNK as usize, pass + 1);
        for (i, chunk) in last.chunks(CHUNK as usize).enumerate() {
            v.write_at(i as u64 * CHUNK, chunk, false).unwrap();
        }
    }
    let written = 40 * 64 * CHUNK;
    let grown = disk.bytes() - base;
    // Live data (256 KiB), the dead bytes allowed before a full pass (4 packs of 256 KiB),
    // the packs being filled and compacted into, and the index: far below what was written.
    assert!(
        grown < written / 3,
        "the disk grew by {grown} bytes for {written} bytes written"
    );
    v.flush().unwrap();
    assert_eq!(flat(v.read_at(0, 64 * CHUNK as usize).unwrap()), last);
    drop(v);
    let mut damage = Vec::new();
    vm.store().verify(true, &mut |d| damage.push(d)).unwrap();
    assert!(damage.is_empty(), "{damage:?}");
}

#[test]
fn snapshots_keep_old_content_and_clones_diverge() {
    let disk = SimDisk::new();
    let vm = manager(&disk);
    vm.create_volume("base", 16 * CHUNK, None).unwrap();
    let v = vm.open_volume("base").unwrap();
    v.write_at(100, b"before", false).unwrap();
    drop(v);
    vm.snapshot_volume("base", "snap").unwrap();
    let v = vm.open_volume("base").unwrap();
    v.write_at(100, b"AFTER!", true).unwrap();
    let s = vm.open_volume("snap").unwrap();
    assert_eq!(flat(s.read_at(100, 6).unwrap()), b"before");
    assert!(matches!(
        s.write_at(0, b"x", false),
        Err(Error::VolumeRefused(_))
    ));
    drop(s);
    vm.clone_volume("snap", "clone").unwrap();
    let c = vm.open_volume("clone").unwrap();
    assert_eq!(flat(c.read_at(100, 6).unwrap()), b"before");
    c.write_at(100, b"clone!", true).unwrap();
    assert_eq!(flat(c.read_at(100, 6).unwrap()), b"clone!");
    assert_eq!(flat(v.read_at(100, 6).unwrap()), b"AFTER!");
    // In use: no delete; then deleting the origin keeps the others readable.
    assert!(matches!(
        vm.delete_volume("clone"),
        Err(Error::VolumeInUse(_))
    ));
    drop((c, v));
    vm.delete_volume("base").unwrap();
    vm.delete_volume("snap").unwrap();
    let c = vm.open_volume("clone").unwrap();
    assert_eq!(flat(c.read_at(100, 6).unwrap()), b"clone!");
    assert!(matches!(
        vm.open_volume("snap"),
        Err(Error::VolumeNotFound(_))
    ));
}

#[test]
fn an_empty_100_tib_volume_costs_almost_nothing_and_maps_as_one_hole() {
    let vm = VirtualMemory::open(VmConfig::new(Backend::Memory)).unwrap();
    let before = vm.store().totals().physical;
    vm.create_volume("huge", 100 << 40, None).unwrap();
    assert!(vm.store().totals().physical - before <= 4096);
    let v = vm.open_volume("huge").unwrap();
    let map = v.extents(0, 100 << 40).unwrap();
    assert_eq!(map.len(), 1);
    assert!(map[0].hole && map[0].zero && map[0].len == 100 << 40);
    v.write_at(50 << 40, b"x", false).unwrap();
    let map = v.extents(0, 100 << 40).unwrap();
    assert_eq!(map.len(), 3, "{map:?}");
    assert!(!map[1].hole && !map[1].zero);
    assert_eq!(flat(v.read_at((50 << 40) - 1, 3).unwrap()), b"\0x\0");
    // Zeroing it all with NO_HOLE keeps the cost bounded (over the row limit it deallocates).
    v.write_zeroes(0, 100 << 40, false, true).unwrap();
    assert_eq!(v.extents(0, 100 << 40).unwrap().len(), 1);
}

#[test]
fn seeded_volumes_need_unlocking_and_their_chunks_are_sealed() {
    let mut config = VmConfig::new(Backend::Memory);
    config.kdf = aetherflow_engine::KdfParams::MINIMUM;
    let vm = VirtualMemory::open(config).unwrap();
    let seed = aetherflow_vm::Seed::new("volume seed").unwrap();
    vm.create_volume("secret", 1 << 20, Some(&seed)).unwrap();
    let data = super::noise(70_000, 9);
    let v = vm.open_volume("secret").unwrap();
    v.write_at(0, &data, true).unwrap();
    drop(v);
    vm.lock_volume("secret").unwrap();
    assert!(matches!(
        vm.open_volume("secret"),
        Err(Error::VolumeLocked(_))
    ));
    let wrong = aetherflow_vm::Seed::new("not it").unwrap();
    assert!(matches!(
        vm.unlock_volume("secret", &wrong),
        Err(Error::VolumeWrongSeed(_))
    ));
    vm.unlock_volume("secret", &seed).unwrap();
    let v = vm.open_volume("secret").unwrap();
    assert_eq!(flat(v.read_at(0, 70_000).unwrap()), data);
    assert!(matches!(
        vm.lock_volume("secret"),
        Err(Error::VolumeInUse(_))
    ));
    // Nothing stored is the plaintext (noise is stored raw: unsealed, it would be there).
    let probe = &data[1000..1032];
    let mut plain_seen = false;
    vm.store()
        .volume_map("secret", 0..u64::MAX, &mut |_, e| {
            if let Some(id) = e.chunk() {
                let stored = vm.store().chunk(&id).unwrap();
                assert!(stored.info.nonce_stored);
                plain_seen |= stored.payload.windows(32).any(|w| w == probe);
            }
            true
        })
        .unwrap();
    assert!(!plain_seen);
}

#[test]
fn concurrent_writers_of_one_chunk_never_lose_each_others_bytes() {
    let disk = SimDisk::new();
    let vm = manager(&disk);
    // Four writers share every chunk: writer t owns every fourth 512-byte stripe, writes each
    // once, and the buffer (a few chunks) is written back under them. A lost read-modify-write
    // or a write-back that drops a newer write loses a stripe for good.
    let stripe_value = |round: u64, s: u64| (round * 7 + s * 13 % 251) as u8 | 1;
    for round in 0..20u64 {
        let name = format!("shared{round}");
        vm.create_volume(&name, 32 * CHUNK, None).unwrap();
        let v = vm.open_volume(&name).unwrap();
        let stripes = 32 * CHUNK / 512;
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let v = &v;
                scope.spawn(move || {
                    for s in (t..stripes).step_by(4) {
                        v.write_at(s * 512, &[stripe_value(round, s); 512], false)
                            .unwrap();
                    }
                });
            }
        });
        v.flush().unwrap();
        let got = flat(v.read_at(0, (32 * CHUNK) as usize).unwrap());
        for (s, stripe) in got.chunks(512).enumerate() {
            assert!(
                stripe.iter().all(|&b| b == stripe_value(round, s as u64)),
                "round {round}: stripe {s} was lost"
            );
        }
    }
}

#[test]
fn a_full_store_fails_flushes_and_keeps_every_answered_write_readable() {
    let disk = SimDisk::new();
    let vm = manager(&disk);
    vm.create_volume("v", SIZE, None).unwrap();
    let v = vm.open_volume("v").unwrap();
    let first: Vec<u8> = (0..8 * CHUNK).map(|i| (i * 7 % 251) as u8).collect();
    v.write_at(0, &first, false).unwrap();
    v.flush().unwrap();
    disk.set_full(true);
    // Writes are buffered (and answered) while the buffer has room; the flush reports that
    // they cannot be made durable.
    let second: Vec<u8> = (0..4 * CHUNK).map(|i| (i * 13 % 241) as u8 | 1).collect();
    v.write_at(CHUNK, &second, false).unwrap();
    let err = v.flush().unwrap_err();
    assert!(
        matches!(&err, Error::Store(aetherflow_store::Error::Io(io)) if io.kind() == std::io::ErrorKind::StorageFull),
        "{err}"
    );
    // Far past the buffer's limit, writes are refused rather than held without bound.
    let mut refused = None;
    for i in 0..64u64 {
        let offset = (i % 60) * CHUNK;
        if let Err(e) = v.write_at(offset, &vec![(i as u8) | 0x80; CHUNK as usize], false) {
            refused = Some((i, e));
            break;
        }
    }
    let (i, e) = refused.expect("writes went on into a full store without bound");
    assert!(matches!(e, Error::Store(_)), "{e}");
    assert!(
        v.buffered() <= 3 * (24 << 10),
        "{} bytes buffered",
        v.buffered()
    );
    // The last handle goes while the store is full: the writes stay, readable by the next one.
    let expected = flat(v.read_at(0, SIZE as usize).unwrap());
    drop(v);
    assert!(vm.volume_info("v").unwrap().bytes.buffered > 0);
    let v = vm.open_volume("v").unwrap();
    assert_eq!(flat(v.read_at(0, SIZE as usize).unwrap()), expected);
    // Space comes back: the flush succeeds and everything answered is durable.
    disk.set_full(false);
    v.flush().unwrap();
    drop(v);
    assert_eq!(vm.volume_info("v").unwrap().bytes.buffered, 0);
    drop(vm);
    let vm = manager(&disk.power_loss());
    assert_eq!(read_all(&vm, "v"), expected, "refused at write {i}");
    assert!(vm.check(true, None).unwrap().is_clean());
}
