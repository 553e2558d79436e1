//! The command line on S3-compatible storage (SeaweedFS started by `scripts/test.sh`): `check`
//! names damaged blocks, `serve` refuses bad credentials and missing buckets at startup.

use std::process::{Command, Stdio};
use std::time::Duration;

use aetherflow_s3::remote::Remote;
use aetherflow_vm::{Backend, S3Location, S3Options, VirtualMemory, VmConfig};

use super::{af, stderr, wait_with_timeout, CORRUPT, IO};

fn endpoint() -> String {
    std::env::var("AF_S3_ENDPOINT").expect(
        "AF_S3_ENDPOINT is not set: these tests need a real S3 server. Run them with \
         `bash scripts/test.sh`, which installs and starts SeaweedFS",
    )
}

fn bucket() -> String {
    std::env::var("AF_S3_BUCKET").unwrap_or_else(|_| "aetherflow-test".into())
}

/// A store URL under a prefix no other test uses, named after `what`.
fn fresh_url(what: &str) -> String {
    format!(
        "s3://{}/{what}-{}?endpoint={}",
        bucket(),
        uuid::Uuid::new_v4().simple(),
        endpoint()
    )
}

fn noise(len: usize, salt: u64) -> Vec<u8> {
    let mut state = 0x9e3779b97f4a7c15u64.wrapping_mul(salt + 1) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

#[test]
fn check_names_the_block_a_damaged_object_hurts() {
    let url = fresh_url("cli");
    let location: S3Location = url.parse().unwrap();
    let vm = VirtualMemory::open(VmConfig::new(Backend::S3(
        location.clone(),
        S3Options::single_writer(),
    )))
    .unwrap();
    let hurt = vm.allocate(&noise(40_000, 1), None).unwrap();
    let remote = Remote::connect(&location, Default::default()).unwrap();
    let first_pack = remote.list("packs/").unwrap()[0].key.clone();
    let fine = vm.allocate(&noise(40_000, 2), None).unwrap();
    drop(vm);

    let out = af(&["check", "--store", &url, "--read-data"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut bytes = remote.get(&first_pack).unwrap().to_vec();
    bytes[1000] ^= 0x40;
    remote
        .put(&first_pack, bytes::Bytes::from(bytes), false)
        .unwrap();
    let out = af(&["check", "--store", &url, "--read-data"]);
    assert_eq!(out.status.code(), Some(CORRUPT), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&hurt.to_string()), "{text}");
    assert!(!text.contains(&fine.to_string()), "{text}");
}

fn serve_fails(store: &str, secret: &str) -> (Option<i32>, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_aetherflow"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", store])
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(60));
    (out.status.code(), stderr(&out))
}

#[test]
fn serve_refuses_wrong_credentials_and_missing_buckets_at_startup() {
    let good_secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
    let store = format!("s3://{}/cli-creds?endpoint={}", bucket(), endpoint());
    let (code, err) = serve_fails(&store, "not-the-secret");
    assert_eq!(code, Some(IO), "{err}");
    assert!(
        err.contains("access denied") && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );

    let missing = format!("s3://no-such-bucket-here/p?endpoint={}", endpoint());
    let (code, err) = serve_fails(&missing, &good_secret);
    assert_eq!(code, Some(IO), "{err}");
    assert!(
        err.contains("bucket no-such-bucket-here does not exist"),
        "{err}"
    );

    let (code, err) = serve_fails("s3://b/p?endpoint=http://10.9.8.7:8333", &good_secret);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("allow_http=true"), "{err}");
}

/// The bytes the fixture's blocks and volumes were written with (by the build of format
/// version 2: `crates/s3/tests/fixtures/README.md`).
fn fixture_text() -> Vec<u8> {
    let mut text: Vec<u8> = (0..1400)
        .flat_map(|i| {
            format!("line {i:06} of the fixture written by store version 2\n").into_bytes()
        })
        .collect();
    text.truncate(65536);
    text
}

fn uploaded_fixture() -> (String, S3Location, Remote) {
    let url = fresh_url("cli-v2");
    let location: S3Location = url.parse().unwrap();
    let remote = Remote::connect(&location, Default::default()).unwrap();
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../s3/tests/fixtures/bucket-v2");
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let key = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                let body = bytes::Bytes::from(std::fs::read(&path).unwrap());
                remote.put(&key, body, false).unwrap();
            }
        }
    }
    (url, location, remote)
}

fn volume_bytes(vm: &VirtualMemory, name: &str, len: usize) -> Vec<u8> {
    let volume = vm.open_volume(name).unwrap();
    let mut out = Vec::with_capacity(len);
    for span in volume.read_at(0, len).unwrap() {
        match span {
            aetherflow_vm::Span::Data(b) => out.extend_from_slice(&b),
            aetherflow_vm::Span::Zeros(n) => out.resize(out.len() + n as usize, 0),
        }
    }
    out
}

#[test]
fn a_store_of_version_2_is_upgraded_once_and_keeps_every_block_and_volume() {
    let (url, location, remote) = uploaded_fixture();
    let ids: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../s3/tests/fixtures/bucket-v2.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let id = |name: &str| -> aetherflow_vm::BlockId {
        ids[name]["blockId"].as_str().unwrap().parse().unwrap()
    };

    // This build refuses it, and says what to run.
    let out = af(&["check", "--store", &url]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("upgrade-store"), "{}", stderr(&out));

    let out = af(&["upgrade-store", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Blocks:         4"), "{text}");
    assert!(text.contains("Volumes:        2"), "{text}");
    let out = af(&[
        "check",
        "--store",
        &url,
        "--read-data",
        "--seed",
        "fixture-seed",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.contains("Content verified: 4 blocks"), "{report}");

    let vm = VirtualMemory::open(VmConfig::new(Backend::S3(
        location.clone(),
        S3Options::single_writer(),
    )))
    .unwrap();
    let text = fixture_text();
    let mut other = text[..32768].to_vec();
    other.extend((0..32768u32).map(|i| ((i * 7) % 251) as u8));
    let seed = aetherflow_vm::Seed::new("fixture-seed").unwrap();
    assert_eq!(vm.read(id("text"), None).unwrap(), text);
    assert_eq!(vm.read(id("shares-half"), None).unwrap(), other);
    assert_eq!(vm.read(id("zeros"), None).unwrap(), vec![0u8; 32768]);
    assert_eq!(vm.read(id("seeded"), Some(&seed)).unwrap(), text);
    assert!(
        vm.read(id("seeded"), None).is_err(),
        "a seeded block needs its seed"
    );

    let mut disk = vec![0u8; 1 << 20];
    disk[65536..196608].fill(0x5a);
    let snap = disk.clone();
    disk[65536..69632].fill(0x33);
    assert!(volume_bytes(&vm, "disk", 1 << 20) == disk, "volume disk");
    assert!(
        volume_bytes(&vm, "disk-snap", 1 << 20) == snap,
        "volume disk-snap"
    );

    // The store goes on as version 3: a new block, and the free of an upgraded one, whose old
    // object goes with it.
    let new = vm.allocate(b"written after the upgrade", None).unwrap();
    assert_eq!(
        vm.read(new, None).unwrap(),
        &b"written after the upgrade"[..]
    );
    vm.free(id("zeros")).unwrap();
    assert!(remote.get(&format!("blocks/{}", id("zeros"))).is_err());
    drop(vm);
    let out = af(&["upgrade-store", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("nothing to do"));
}

/// An upgrade cut short just before its last step (the version still 2) and run again: the
/// log it leaves is one that every server reads, whatever epoch the first run reached.
#[test]
fn an_upgrade_run_again_after_being_cut_short_leaves_a_log_every_server_reads() {
    let (url, location, remote) = uploaded_fixture();
    // The old log had reached epoch 3.
    remote
        .put("log/epochs/0000000000000003", bytes::Bytes::new(), false)
        .unwrap();
    let out = af(&["upgrade-store", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Cut short before its last two steps: the version is 2 again, the epoch it began gone.
    let (_, salt) =
        aetherflow_s3::meta::decode_identity(&remote.get("aetherflow.store").unwrap()).unwrap();
    remote
        .put(
            "aetherflow.store",
            aetherflow_s3::meta::encode_identity(2, &salt),
            false,
        )
        .unwrap();
    remote.delete("log/epochs/0000000000000004").unwrap();
    let out = af(&["upgrade-store", &url]);
    assert!(out.status.success(), "{}", stderr(&out));

    // What one server commits, another opened after it reads from the log.
    let open = || {
        VirtualMemory::open(VmConfig::new(Backend::S3(
            location.clone(),
            S3Options::single_writer(),
        )))
        .unwrap()
    };
    let a = open();
    let id = a.allocate(b"after the second run", None).unwrap();
    drop(a);
    let b = open();
    assert_eq!(b.read(id, None).unwrap(), &b"after the second run"[..]);
}
