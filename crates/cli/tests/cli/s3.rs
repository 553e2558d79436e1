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
    let url = format!(
        "s3://{}/cli-{}?endpoint={}",
        bucket(),
        uuid::Uuid::new_v4().simple(),
        endpoint()
    );
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
