//! A volume on object storage read front to back by a server that has cached nothing: the
//! chunks of a write-back lie in their pack in volume order, and a sequential reader is
//! fetched ahead in runs of them, so the read costs a GET per run, not one per chunk.
//! Needs the SeaweedFS that `scripts/test.sh` starts (`AF_S3_ENDPOINT`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aetherflow_vm::{Backend, S3Location, S3Options, Span, VirtualMemory, VmConfig};

fn location() -> S3Location {
    let endpoint = std::env::var("AF_S3_ENDPOINT").expect(
        "AF_S3_ENDPOINT is not set: these tests need a real S3 server. Run them with \
         `bash scripts/test.sh`, which installs and starts SeaweedFS (scripts/seaweedfs.sh)",
    );
    let bucket = std::env::var("AF_S3_BUCKET").unwrap_or_else(|_| "aetherflow-test".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("s3://{bucket}/vm-reads-{nanos}?endpoint={endpoint}")
        .parse()
        .unwrap()
}

fn server(location: &S3Location) -> VirtualMemory {
    let options = S3Options {
        sweep_every: None,
        refresh_every: Duration::from_secs(3600),
        ..S3Options::single_writer()
    };
    VirtualMemory::open(VmConfig::new(Backend::S3(location.clone(), options))).unwrap()
}

/// `len` bytes that neither compress nor repeat.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

#[test]
fn a_cold_sequential_read_costs_a_get_per_run_of_chunks() {
    const SIZE: usize = 8 << 20;
    const REQUEST: usize = 256 << 10;
    let location = location();
    let content = noise(SIZE);
    {
        let vm = server(&location);
        vm.create_volume("v", SIZE as u64, None).unwrap();
        let v = vm.open_volume("v").unwrap();
        for at in (0..SIZE).step_by(REQUEST) {
            v.write_at(at as u64, &content[at..at + REQUEST], false)
                .unwrap();
        }
        v.flush().unwrap();
    }

    let groups = (SIZE / (64 << 10)) as u64;
    let requests = SIZE / REQUEST;
    // Front to back: one GET per stored group (128) without runs; a handful with them.
    let in_order: Vec<usize> = (0..requests).collect();
    let made = cold_read(&location, &content, &in_order, REQUEST);
    assert!(
        made * 8 <= groups,
        "{made} GETs to read {groups} stored groups back in order"
    );
    // Requests that jump about fetch nothing ahead, but the groups of each one lie back to
    // back in their pack (written in volume order), so each costs one GET, not four.
    let jumping: Vec<usize> = (0..requests).map(|i| i * 13 % requests).collect();
    let made = cold_read(&location, &content, &jumping, REQUEST);
    assert!(
        made as usize <= requests + requests / 4,
        "{made} GETs for {requests} requests of four groups each"
    );
}

/// A new server reads the requests of `order` (each `len` bytes); returns the GETs it made.
fn cold_read(location: &S3Location, content: &[u8], order: &[usize], len: usize) -> u64 {
    let vm = server(location);
    let v = vm.open_volume("v").unwrap();
    let gets = || vm.store().remote_requests().unwrap().get;
    let before = gets();
    for &request in order {
        let at = request * len;
        let mut read = Vec::with_capacity(len);
        for span in v.read_at(at as u64, len).unwrap() {
            match span {
                Span::Data(b) => read.extend_from_slice(&b),
                Span::Zeros(n) => read.resize(read.len() + n as usize, 0),
            }
        }
        assert!(read == content[at..at + len], "bytes at {at} differ");
    }
    gets() - before
}
