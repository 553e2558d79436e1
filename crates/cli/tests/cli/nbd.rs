//! Volumes served by `aetherflow serve --nbd` to real clients nobody here wrote: qemu-img,
//! qemu-io, libnbd's nbdcopy and nbdfuse, fio, and an ext4 filesystem (mke2fs, fuse2fs,
//! e2fsck) living on a volume across restarts and `kill -9`. Also the `volume` commands, raw
//! garbage on the socket, and a disk that fills up.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{af, p, stderr};

/// A server process with its NBD listener. Its log is collected (and shown when a test
/// fails); it is killed if the test ends first.
struct Served {
    child: Child,
    url: String,
    nbd: String,
    log: Arc<Mutex<String>>,
}

impl Served {
    fn start(data_dir: &Path) -> Served {
        Served::start_on(&["--data-dir", p(data_dir)])
    }

    /// A server on the store its arguments name.
    fn start_on(store: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aetherflow"))
            .args(["serve", "--listen", "127.0.0.1:0", "--nbd", "127.0.0.1:0"])
            .args(store)
            .env_remove("AF_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let (mut url, mut nbd) = (None, None);
        let mut seen = String::new();
        while url.is_none() || nbd.is_none() {
            let mut line = String::new();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "the server exited before listening: {seen}"
            );
            let word = |after: &str| {
                line.split(after)
                    .nth(1)
                    .map(|r| r.split_whitespace().next().unwrap().to_string())
            };
            url = url.or(word("listening on "));
            nbd = nbd.or(word("over NBD on "));
            seen.push_str(&line);
        }
        let log = Arc::new(Mutex::new(seen));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in err.lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Served {
            child,
            url: url.unwrap(),
            nbd: nbd.unwrap(),
            log,
        }
    }

    fn uri(&self, volume: &str) -> String {
        format!("{}/{volume}", self.nbd)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `aetherflow volume ...` against this server, `--json`; the parsed answer.
    fn volume(&self, args: &[&str]) -> Value {
        let mut all = vec!["volume"];
        all.extend_from_slice(args);
        all.extend(["--server", &self.url, "--json"]);
        let out = af(&all);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// SIGTERM: the server finishes what is in flight, writes back every volume, exits 0.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}: {}", self.log());
    }

    /// SIGKILL: no chance to write anything back.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} is not installed ({e}): run scripts/deps.sh"))
}

fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a client tool and asserts that it succeeded; its output.
fn ok(server: &Served, program: &str, args: &[&str]) -> String {
    let out = tool(program, args);
    let text = all_output(&out);
    assert!(
        out.status.success(),
        "{program} {args:?}: {text}\nserver log:\n{}",
        server.log()
    );
    text
}

fn qemu_io(server: &Served, uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let text = ok(server, "qemu-io", &args);
    assert!(
        !text.contains("failed") && !text.contains("Pattern verification"),
        "qemu-io {commands:?}: {text}"
    );
    text
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(
            format!("line {i}: the value is {} and ok\n", i * 37 % 1009).as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// A folder worth a filesystem: text, noise, a duplicate, an empty file, nested folders.
fn sample_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = vec![
        (PathBuf::from("notes.txt"), text(3 << 20, 1)),
        (PathBuf::from("data/noise.bin"), noise(2 << 20, 2)),
        (PathBuf::from("data/copy-of-notes.txt"), text(3 << 20, 1)),
        (
            PathBuf::from("data/deep/er/small.txt"),
            b"hello, volume\n".to_vec(),
        ),
        (PathBuf::from("empty"), Vec::new()),
    ];
    for (path, data) in &files {
        let at = root.join(path);
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::write(at, data).unwrap();
    }
    files
}

/// Allocated bytes of a file (what its holes do not cost).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn volume_commands_work_on_a_server_and_in_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let server = Served::start(&data);
    let v = server.volume(&["create", "disk", "--size", "100TiB"]);
    assert_eq!(
        (v["name"].as_str(), v["size"].as_u64()),
        (Some("disk"), Some(100 << 40))
    );
    let s = server.volume(&["snapshot", "disk", "disk.1"]);
    assert_eq!(
        (s["readOnly"].as_bool(), s["origin"].as_str()),
        (Some(true), Some("disk"))
    );
    let c = server.volume(&["clone", "disk.1", "disk2"]);
    assert_eq!(c["origin"], "disk.1");
    let list = server.volume(&["list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["disk", "disk.1", "disk2"]);
    // Text output names what it shows.
    let out = af(&["volume", "info", "disk", "--server", &server.url]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("Size:       100.00 TB (109951162777600 bytes)"),
        "{shown}"
    );
    // Seeds: a wrong one unlocks nothing (exit 5); a malformed size is a usage error (2); an
    // unknown volume a failure (1) that names it.
    server.volume(&["create", "sealed", "--size", "1GiB", "--seed", "right"]);
    server.volume(&["lock", "sealed"]);
    let out = af(&[
        "volume",
        "unlock",
        "sealed",
        "--seed",
        "wrong",
        "--server",
        &server.url,
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong seed"), "{}", stderr(&out));
    server.volume(&["unlock", "sealed", "--seed", "right"]);
    let out = af(&[
        "volume",
        "create",
        "x",
        "--size",
        "lots",
        "--server",
        &server.url,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = af(&["volume", "info", "nope", "--server", &server.url]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("volume nope not found"),
        "{}",
        stderr(&out)
    );
    let out = af(&["volume", "delete", "disk2", "--server", &server.url]);
    assert!(out.status.success(), "{}", stderr(&out));
    server.stop();

    // The same store, directly.
    let out = af(&["volume", "list", "--data-dir", p(&data), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let out = af(&["volume", "delete", "disk.1", "--data-dir", p(&data)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = af(&[
        "volume",
        "unlock",
        "sealed",
        "--seed",
        "right",
        "--data-dir",
        p(&data),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = af(&["check", "--data-dir", p(&data), "--read-data"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_ext4_image_goes_through_qemu_img_and_nbdcopy_and_a_second_copy_costs_its_map() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    sample_tree(&tree);
    let image = dir.path().join("disk.img");
    let out = tool(
        "mke2fs",
        &["-q", "-t", "ext4", "-d", p(&tree), p(&image), "64M"],
    );
    assert!(out.status.success(), "{}", all_output(&out));
    let server = Served::start(&dir.path().join("store"));
    server.volume(&["create", "img", "--size", "64MiB"]);
    server.volume(&["create", "img2", "--size", "64MiB"]);
    let uri = server.uri("img");
    ok(
        &server,
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", p(&image), &uri],
    );
    let same = ok(
        &server,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", p(&image), &uri],
    );
    assert!(same.contains("Images are identical"), "{same}");
    // Back to a file: byte for byte, and sparse where the volume was never written.
    let back = dir.path().join("back.img");
    ok(&server, "nbdcopy", &[&uri, p(&back)]);
    assert!(
        fs::read(&back).unwrap() == fs::read(&image).unwrap(),
        "nbdcopy read back other bytes"
    );
    assert!(
        allocated(&back) < 32 << 20,
        "{} bytes allocated: the holes were filled",
        allocated(&back)
    );
    // A second copy, by nbdcopy this time: every chunk is shared, it costs its map only.
    ok(
        &server,
        "nbdcopy",
        &["--flush", p(&image), &server.uri("img2")],
    );
    let same = ok(
        &server,
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            p(&image),
            &server.uri("img2"),
        ],
    );
    assert!(same.contains("Images are identical"), "{same}");
    let first = server.volume(&["info", "img"]);
    let second = server.volume(&["info", "img2"]);
    let stored = first["bytes"]["stored"].as_u64().unwrap();
    let written = first["bytes"]["written"].as_u64().unwrap();
    assert!(written > 8 << 20 && written < 32 << 20, "{first}");
    // The noise does not compress; the text does, and its copy dedups.
    assert!(stored < written * 2 / 3, "{first}");
    assert_eq!(
        second["bytes"]["unique"], first["bytes"]["unique"],
        "{second}"
    );
    let extra = second["bytes"]["physical"].as_u64().unwrap();
    assert!(
        extra * 50 <= stored,
        "the second copy costs {extra} bytes of {stored}: {second}"
    );
    server.stop();
}

#[test]
fn fio_verifies_random_and_sequential_writes_of_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("store"));
    server.volume(&["create", "fio", "--size", "256MiB"]);
    let uri = server.uri("fio");
    for (rw, bs) in [("randwrite", "--bsrange=4k-1m"), ("write", "--bs=1m")] {
        let out = tool(
            "fio",
            &[
                "--name=v",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                &format!("--rw={rw}"),
                bs,
                "--size=64m",
                "--verify=crc32c",
                // No state file left in the working directory.
                "--verify_state_save=0",
                "--iodepth=16",
                "--output-format=json",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let json_at = text
            .find('{')
            .unwrap_or_else(|| panic!("fio {rw}: {}", all_output(&out)));
        let report: Value = serde_json::from_str(&text[json_at..]).unwrap();
        let job = &report["jobs"][0];
        assert!(
            out.status.success(),
            "fio {rw}: {}\n{}",
            all_output(&out),
            server.log()
        );
        assert_eq!(job["error"], 0, "fio {rw}: {job}");
        assert!(
            job["write"]["io_bytes"].as_u64().unwrap() >= 64 << 20,
            "{job}"
        );
        assert!(
            job["read"]["io_bytes"].as_u64().unwrap() >= 64 << 20,
            "fio verified nothing: {job}"
        );
    }
    server.stop();
}

/// Mounts with a FUSE tool; unmounted (and its process reaped) when dropped.
struct Mount {
    at: PathBuf,
    process: Option<Child>,
}

impl Mount {
    /// `nbdfuse DIR URI`: the export as the file DIR/nbd.
    fn nbdfuse(at: &Path, uri: &str) -> Mount {
        fs::create_dir_all(at).unwrap();
        let child = Command::new("nbdfuse")
            .args([p(at), uri])
            .stdin(Stdio::null())
            .spawn()
            .expect("nbdfuse is installed (scripts/deps.sh)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !at.join("nbd").exists() {
            assert!(Instant::now() < deadline, "nbdfuse never showed the export");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mount {
            at: at.to_path_buf(),
            process: Some(child),
        }
    }

    /// `fuse2fs IMAGE DIR`: the ext4 filesystem in IMAGE, mounted (read-only if asked).
    fn fuse2fs(image: &Path, at: &Path, read_only: bool) -> Mount {
        fs::create_dir_all(at).unwrap();
        let options = if read_only { "ro,fakeroot" } else { "fakeroot" };
        let out = tool("fuse2fs", &["-o", options, p(image), p(at)]);
        assert!(out.status.success(), "fuse2fs: {}", all_output(&out));
        Mount {
            at: at.to_path_buf(),
            process: None,
        }
    }

    fn unmount(mut self) {
        self.release(true);
    }

    fn release(&mut self, strict: bool) {
        // A mount above this one (fuse2fs on nbdfuse's file) lets go of it a moment after its
        // own unmount: busy until then.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = tool("fusermount", &["-u", p(&self.at)]);
            if out.status.success() || !strict {
                break;
            }
            let text = all_output(&out);
            assert!(
                text.contains("busy") && Instant::now() < deadline,
                "fusermount: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut child) = self.process.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.release(false);
    }
}

#[test]
fn an_ext4_filesystem_lives_on_a_volume_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let server = Served::start(&data);
    server.volume(&["create", "fs", "--size", "128MiB"]);
    let device = dir.path().join("dev");
    let mounted = dir.path().join("mnt");
    let nbd = Mount::nbdfuse(&device, &server.uri("fs"));
    let image = device.join("nbd");
    ok(&server, "mkfs.ext4", &["-q", "-F", p(&image)]);
    let fs_mount = Mount::fuse2fs(&image, &mounted, false);
    let files = sample_tree(&mounted);
    fs_mount.unmount();
    nbd.unmount();
    server.stop();

    let server = Served::start(&data);
    let nbd = Mount::nbdfuse(&device, &server.uri("fs"));
    ok(&server, "e2fsck", &["-fn", p(&image)]);
    let fs_mount = Mount::fuse2fs(&image, &mounted, true);
    for (path, content) in &files {
        assert!(
            fs::read(mounted.join(path)).unwrap() == *content,
            "{} differs",
            path.display()
        );
    }
    fs_mount.unmount();
    nbd.unmount();
    let info = server.volume(&["info", "fs"]);
    // What ext4 wrote is stored compressed (the text compresses, the noise does not).
    let b = &info["bytes"];
    let (written, stored) = (
        b["written"].as_u64().unwrap(),
        b["stored"].as_u64().unwrap(),
    );
    assert!(written >= 8 << 20 && stored < written / 2, "{info}");
    server.stop();
    let out = af(&["check", "--data-dir", p(&data), "--read-data"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The volumes' default chunk: a crash leaves each one old or new, never torn.
const CHUNK: u64 = 16 * 1024;

/// Bytes of pattern writes, chunk-aligned, that qemu-io sends one after another.
fn chunk_writes(first_chunk: u64, chunks: u64, round: u64) -> Vec<(u64, u8)> {
    (0..chunks)
        .map(|k| (first_chunk + k, (0x40 + (round * 31 + k * 7) % 180) as u8))
        .collect()
}

#[test]
fn kill_9_keeps_every_flushed_write_and_tears_no_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let size: u64 = 32 << 20;
    let mut server = Served::start(&data);
    server.volume(&["create", "crash", "--size", "32MiB"]);
    // flushed[i]: what chunk i must hold; maybe[i]: other values it may hold (unflushed).
    let chunks = size / CHUNK;
    let mut flushed = vec![0u8; chunks as usize];
    let mut maybe: Vec<Vec<u8>> = vec![Vec::new(); chunks as usize];
    for round in 0..3u64 {
        let uri = server.uri("crash");
        // Flushed: one megabyte per round, in its own place.
        let per_mib = (1 << 20) / CHUNK;
        let at = round * per_mib + 1;
        let value = 0x10 + round as u8;
        qemu_io(
            &server,
            &uri,
            &[&format!("write -P {value} {} 1M", at * CHUNK), "flush"],
        );
        for i in at..at + per_mib {
            flushed[i as usize] = value;
            maybe[i as usize].clear();
        }
        // Unflushed: whole chunks over the upper half, one after another, while the server is
        // killed.
        let writes = chunk_writes(chunks / 2, chunks / 2, round);
        let commands: Vec<String> = writes
            .iter()
            .map(|(i, v)| format!("write -P {v} {} {CHUNK}", i * CHUNK))
            .collect();
        let mut args = vec!["-f".to_string(), "raw".to_string()];
        for c in &commands {
            args.push("-c".into());
            args.push(c.clone());
        }
        args.push(uri.clone());
        let writer = Command::new("qemu-io")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for (i, v) in &writes {
            maybe[*i as usize].push(*v);
        }
        std::thread::sleep(Duration::from_millis(300 + 200 * round));
        server.kill();
        let _ = writer.wait_with_output();
        server = Served::start(&data);
        let back = dir.path().join(format!("back{round}.raw"));
        ok(&server, "nbdcopy", &[&server.uri("crash"), p(&back)]);
        let content = fs::read(&back).unwrap();
        assert_eq!(content.len() as u64, size);
        for (i, chunk) in content.chunks(CHUNK as usize).enumerate() {
            let v = chunk[0];
            assert!(
                chunk.iter().all(|&b| b == v),
                "round {round}: chunk {i} is torn"
            );
            assert!(
                v == flushed[i] || maybe[i].contains(&v),
                "round {round}: chunk {i} holds {v:#x}, not {:#x} or one of {:?}",
                flushed[i],
                maybe[i]
            );
            // What survived is the state from now on.
            flushed[i] = v;
            maybe[i].clear();
        }
    }
    server.stop();
    let out = af(&["check", "--data-dir", p(&data), "--read-data"]);
    assert!(
        out.status.success(),
        "{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The NBD greeting read, and the handshake done as an old client does (`NBD_OPT_EXPORT_NAME`).
fn old_style_open(addr: &str, export: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
    s.write_all(b"IHAVEOPT").unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap(); // NBD_OPT_EXPORT_NAME
    s.write_all(&(export.len() as u32).to_be_bytes()).unwrap();
    s.write_all(export.as_bytes()).unwrap();
    let mut answer = [0u8; 10];
    s.read_exact(&mut answer).unwrap();
    s
}

/// True once the server has closed the connection (EOF or reset), within the timeout.
fn closed_by_server(mut s: std::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error reply before the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn garbage_and_hostile_requests_end_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("store"));
    server.volume(&["create", "v", "--size", "1GiB"]);
    let uri = server.uri("v");
    qemu_io(&server, &uri, &["write -P 0x66 0 4096", "flush"]);
    let addr = server.nbd.trim_start_matches("nbd://").to_string();
    // Noise instead of a handshake.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&noise(4096, 9));
    assert!(
        closed_by_server(s),
        "the server kept a connection that sent noise"
    );
    // A write that claims a 1 GiB payload: refused without reading or buffering it.
    let mut s = old_style_open(&addr, "v");
    let mut request = Vec::new();
    request.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    request.extend_from_slice(&0u16.to_be_bytes()); // flags
    request.extend_from_slice(&1u16.to_be_bytes()); // NBD_CMD_WRITE
    request.extend_from_slice(&7u64.to_be_bytes()); // cookie
    request.extend_from_slice(&0u64.to_be_bytes()); // offset
    request.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&request).unwrap();
    assert!(closed_by_server(s), "the server waited for a 1 GiB payload");
    // A request header with a bad magic, mid-session.
    let mut s = old_style_open(&addr, "v");
    s.write_all(&[0xAB; 28]).unwrap();
    assert!(
        closed_by_server(s),
        "the server kept a connection with a bad request magic"
    );
    // An unknown command gets EINVAL, and the connection goes on.
    let mut s = old_style_open(&addr, "v");
    let mut request = Vec::new();
    request.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    request.extend_from_slice(&0u16.to_be_bytes());
    request.extend_from_slice(&77u16.to_be_bytes());
    request.extend_from_slice(&8u64.to_be_bytes());
    request.extend_from_slice(&0u64.to_be_bytes());
    request.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&request).unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..4], &0x6744_6698u32.to_be_bytes(), "a simple reply");
    assert_eq!(
        u32::from_be_bytes(reply[4..8].try_into().unwrap()),
        22,
        "EINVAL"
    );
    assert_eq!(
        u64::from_be_bytes(reply[8..].try_into().unwrap()),
        8,
        "the cookie"
    );
    drop(s);
    // A client that hangs up halfway through a write's payload: nothing of it lands.
    let mut s = old_style_open(&addr, "v");
    let mut request = Vec::new();
    request.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    request.extend_from_slice(&0u16.to_be_bytes());
    request.extend_from_slice(&1u16.to_be_bytes());
    request.extend_from_slice(&9u64.to_be_bytes());
    request.extend_from_slice(&0u64.to_be_bytes());
    request.extend_from_slice(&(64u32 << 10).to_be_bytes());
    request.extend_from_slice(&[0x99; 20_000]);
    s.write_all(&request).unwrap();
    drop(s);
    // Nothing else was disturbed.
    qemu_io(&server, &uri, &["read -P 0x66 0 4096"]);
    server.stop();
}

/// A tmpfs, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                p(dir.path()),
            ])
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root: the test suite runs as root in CI"
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_answers_enospc_and_every_write_lands_once_there_is_room() {
    let disk = Tmpfs::mount("64m");
    let data = disk.0.path().join("store");
    let server = Served::start(&data);
    server.volume(&["create", "v", "--size", "256MiB"]);
    // Leave about 16 MiB, then copy 40 MiB that does not compress, flushing at the end.
    let ballast = disk.0.path().join("ballast");
    fs::write(&ballast, vec![1u8; 46 << 20]).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("noise.raw");
    let content = noise(40 << 20, 77);
    fs::write(&source, &content).unwrap();
    let uri = server.uri("v");
    let out = tool("nbdcopy", &["--flush", p(&source), &uri]);
    assert!(!out.status.success(), "a flush into a full disk succeeded");
    assert!(
        all_output(&out).contains("No space left on device"),
        "{}",
        all_output(&out)
    );
    // Everything answered is still readable, durable or not.
    let back = scratch.path().join("back.raw");
    ok(&server, "nbdcopy", &[&uri, p(&back)]);
    assert!(
        fs::read(&back).unwrap()[..content.len()] == content[..],
        "answered writes were lost"
    );
    // Room again: the next flush writes everything back.
    fs::remove_file(&ballast).unwrap();
    qemu_io(&server, &uri, &["flush"]);
    let info = server.volume(&["info", "v"]);
    assert_eq!(info["bytes"]["buffered"], 0, "{info}");
    assert_eq!(info["bytes"]["written"], 40 << 20, "{info}");
    server.stop();
    let out = af(&["check", "--data-dir", p(&data), "--read-data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let server = Served::start(&data);
    ok(&server, "nbdcopy", &[&server.uri("v"), p(&back)]);
    assert!(
        fs::read(&back).unwrap()[..content.len()] == content[..],
        "the restart lost writes"
    );
    server.stop();
}

#[test]
fn two_servers_on_one_bucket_one_writes_and_the_other_serves_its_snapshot() {
    let endpoint = std::env::var("AF_S3_ENDPOINT").expect(
        "AF_S3_ENDPOINT is not set: run the tests with `bash scripts/test.sh`, which starts SeaweedFS",
    );
    let bucket = std::env::var("AF_S3_BUCKET").unwrap_or_else(|_| "aetherflow-test".into());
    let url = format!(
        "s3://{bucket}/nbd-{}?endpoint={endpoint}",
        uuid::Uuid::new_v4().simple()
    );
    let a = Served::start_on(&["--store", &url]);
    let b = Served::start_on(&["--store", &url]);
    a.volume(&["create", "vm", "--size", "64MiB"]);
    qemu_io(
        &a,
        &a.uri("vm"),
        &["write -P 0x5a 0 1M", "write -P 0x33 40M 100000", "flush"],
    );
    let snap = a.volume(&["snapshot", "vm", "vm.base"]);
    assert_eq!(snap["readOnly"], true);
    qemu_io(&a, &a.uri("vm"), &["write -P 0x77 0 4096"]);
    // The other server serves the snapshot as it was, read-only.
    let read_only = ["-r", "-f", "raw"];
    let mut args: Vec<&str> = read_only.to_vec();
    args.extend(["-c", "read -P 0x5a 0 1M", "-c", "read -P 0x33 40M 100000"]);
    let uri = b.uri("vm.base");
    args.push(&uri);
    let text = ok(&b, "qemu-io", &args);
    assert!(
        !text.contains("failed") && !text.contains("Pattern"),
        "{text}"
    );
    // While the first server has the volume open, the second one is refused it, and says why.
    let mut holder = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "read 0 512",
            "-c",
            "sleep 30000",
            &a.uri("vm"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.volume(&["info", "vm"])["open"] != true {
        assert!(Instant::now() < deadline, "the volume never showed as open");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = tool("qemu-img", &["info", &b.uri("vm")]);
    assert!(!out.status.success());
    assert!(
        all_output(&out).contains("open for writing on another server"),
        "{}",
        all_output(&out)
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    // Closed there, it is the second server's to write.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = tool(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0x44 8M 65536",
                "-c",
                "read -P 0x77 0 4096",
                &b.uri("vm"),
            ],
        );
        if out.status.success() && !all_output(&out).contains("failed") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", all_output(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
    let info = b.volume(&["info", "vm"]);
    assert_eq!(
        info["bytes"]["written"],
        // 100,000 bytes at 40 MiB cover seven chunks of 16 KiB.
        (1 << 20) + 7 * 16384 + 65536,
        "{info}"
    );
    a.stop();
    b.stop();
    let out = af(&["check", "--store", &url, "--read-data"]);
    assert!(
        out.status.success(),
        "{}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
}
