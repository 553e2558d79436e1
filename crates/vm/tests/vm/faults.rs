//! Damage and full disks: errors that name what is hurt, and nothing else lost.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::Command;

use aetherflow_vm::{Error, VirtualMemory};

use super::{local, noise, text};

#[test]
fn a_flipped_bit_in_a_pack_hurts_only_the_blocks_that_use_it() {
    let dir = tempfile::tempdir().unwrap();
    let vm = local(dir.path());
    // Incompressible blocks below the minimum chunk size are one raw chunk each, stored in
    // allocation order, so offsets are predictable.
    let blocks: Vec<_> = (0..6)
        .map(|i| {
            let data = noise(60_000, 50 + i);
            (vm.allocate(&data, None).unwrap(), data)
        })
        .collect();
    // Block 3 also shares block 2's content: damage to that chunk must hurt both.
    let twin = vm.allocate(&blocks[2].1, None).unwrap();
    let pack = fs::read_dir(dir.path().join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let at = 16 + 2 * (61 + 60_000) + 61 + 4321;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    drop(f);

    let damaged = [blocks[2].0, twin];
    for (id, data) in &blocks {
        match vm.read(*id, None) {
            Ok(got) => {
                assert!(!damaged.contains(id));
                assert_eq!(&got[..], &data[..]);
            }
            Err(Error::Corrupt { block, .. }) => assert!(damaged.contains(&block) && block == *id),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(vm.read(twin, None), Err(Error::Corrupt { .. })));
    let report = vm.check(true, None).unwrap();
    let mut named: Vec<String> = report.damaged_blocks.iter().map(|d| d.id.clone()).collect();
    named.sort();
    let mut expected: Vec<String> = damaged.iter().map(|id| id.to_string()).collect();
    expected.sort();
    assert_eq!(named, expected, "{report:?}");
    assert_eq!(report.damaged_chunks.len(), 1);
    assert_eq!(report.blocks_verified, 5);
    // The quick check reads no data and so finds nothing.
    assert!(vm.check(false, None).unwrap().is_clean());
}

/// A small tmpfs, unmounted when dropped, even after a failed assertion.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs")
            .success();
        assert!(
            ok,
            "mounting a tmpfs needs root: the test suite runs as root in CI"
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_fails_the_allocation_cleanly_and_the_store_recovers() {
    let disk = SmallDisk::mount("24m");
    let data_dir = disk.0.path().join("store");
    let vm: VirtualMemory = local(&data_dir);
    let kept = text(1 << 20, 60);
    let kept_id = vm.allocate(&kept, None).unwrap();
    // Leave about 2 MiB free, then ask for 6 MiB of incompressible data.
    let ballast = disk.0.path().join("ballast");
    let free_now = {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(disk.0.path())
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    fs::write(&ballast, vec![1u8; (free_now - (2 << 20)) as usize]).unwrap();
    let before = vm.summary();
    let err = vm.allocate(&noise(6 << 20, 61), None).unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    let after = vm.summary();
    assert_eq!(
        (after.total_blocks, after.bytes.logical, after.bytes.unique),
        (
            before.total_blocks,
            before.bytes.logical,
            before.bytes.unique
        )
    );
    assert_eq!(&vm.read(kept_id, None).unwrap()[..], &kept[..]);
    // Space comes back: the same store takes the allocation, and everything checks out.
    fs::remove_file(&ballast).unwrap();
    let big = noise(6 << 20, 61);
    let id = vm.allocate(&big, None).unwrap();
    assert_eq!(&vm.read(id, None).unwrap()[..], &big[..]);
    let report = vm.check(true, None).unwrap();
    assert!(report.is_clean(), "{report:?}");
    drop(vm);
    let vm = local(&data_dir);
    assert_eq!(vm.summary().total_blocks, 2);
    assert!(vm.check(true, None).unwrap().is_clean());
}
