//! The protocol layer against real NBD clients (qemu-img, qemu-io, libnbd's nbdinfo and
//! nbdcopy), over a sparse export in memory. The volumes behind the product's own exports are
//! tested with the same clients in the server's tests; these pin the protocol down alone.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use aetherflow_nbd::{
    serve, BlockSizes, Errno, Export, ExportError, ExportInfo, ExportResult, Exports, Extent,
    Limits, OpenError, Piece, Unobserved,
};
use bytes::Bytes;

const PAGE: u64 = 64 * 1024;

/// A sparse byte array: pages that were written, holes elsewhere.
struct Sparse {
    size: u64,
    pages: Mutex<BTreeMap<u64, Vec<u8>>>,
    read_only: bool,
}

impl Sparse {
    fn new(size: u64, read_only: bool) -> Sparse {
        Sparse {
            size,
            pages: Mutex::default(),
            read_only,
        }
    }
}

impl Export for Sparse {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            size: self.size,
            read_only: self.read_only,
            block: BlockSizes {
                minimum: 1,
                preferred: PAGE as u32,
                maximum: 32 << 20,
            },
            multi_conn: true,
            description: "test export".into(),
        }
    }

    fn read(&self, offset: u64, len: u32) -> ExportResult<Vec<Piece>> {
        let pages = self.pages.lock().unwrap();
        let mut out = Vec::new();
        let (mut at, end) = (offset, offset + u64::from(len));
        while at < end {
            let page = at / PAGE;
            let within = at % PAGE;
            let n = (PAGE - within).min(end - at);
            match pages.get(&page) {
                Some(p) => out.push(Piece::Data(Bytes::copy_from_slice(
                    &p[within as usize..(within + n) as usize],
                ))),
                None => out.push(Piece::Zeros(n)),
            }
            at += n;
        }
        Ok(out)
    }

    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> ExportResult<()> {
        let mut pages = self.pages.lock().unwrap();
        let mut at = 0usize;
        while at < data.len() {
            let pos = offset + at as u64;
            let (page, within) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - within).min(data.len() - at);
            let p = pages.entry(page).or_insert_with(|| vec![0; PAGE as usize]);
            p[within..within + n].copy_from_slice(&data[at..at + n]);
            at += n;
        }
        Ok(())
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _punch: bool,
        _fast: bool,
        _fua: bool,
    ) -> ExportResult<()> {
        let mut pages = self.pages.lock().unwrap();
        let mut at = offset;
        while at < offset + len {
            let (page, within) = (at / PAGE, at % PAGE);
            let n = (PAGE - within).min(offset + len - at);
            if within == 0 && n == PAGE {
                pages.remove(&page);
            } else if let Some(p) = pages.get_mut(&page) {
                p[within as usize..(within + n) as usize].fill(0);
            }
            at += n;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()> {
        self.write_zeroes(offset, len, true, false, fua)
    }

    fn flush(&self) -> ExportResult<()> {
        Ok(())
    }

    fn cache(&self, _offset: u64, _len: u64) -> ExportResult<()> {
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> ExportResult<Vec<Extent>> {
        let pages = self.pages.lock().unwrap();
        let mut out = Vec::new();
        let mut at = offset;
        let end = offset + len;
        for (&page, _) in pages.range(offset / PAGE..) {
            let start = page * PAGE;
            if start >= end {
                break;
            }
            if start > at {
                out.push(Extent {
                    len: start - at,
                    hole: true,
                    zero: true,
                });
                at = start;
            }
            let stop = (start + PAGE).min(end);
            if stop > at {
                out.push(Extent {
                    len: stop - at,
                    hole: false,
                    zero: false,
                });
                at = stop;
            }
        }
        if at < end {
            out.push(Extent {
                len: end - at,
                hole: true,
                zero: true,
            });
        }
        if out.is_empty() {
            return Err(ExportError::new(Errno::Inval, "empty range"));
        }
        Ok(out)
    }
}

struct One(Arc<Sparse>, Arc<Sparse>);

impl Exports for One {
    fn list(&self) -> Vec<(String, String)> {
        vec![
            ("disk".into(), "a sparse disk".into()),
            ("frozen".into(), "read-only".into()),
        ]
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, OpenError> {
        match name {
            "" | "disk" => Ok(self.0.clone()),
            "frozen" => Ok(self.1.clone()),
            _ => Err(OpenError::Unknown),
        }
    }
}

/// A server on a free port for the life of the returned runtime.
fn start(size: u64) -> (tokio::runtime::Runtime, String, Arc<Sparse>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let disk = Arc::new(Sparse::new(size, false));
    let frozen = Arc::new(Sparse::new(1 << 20, true));
    let exports = Arc::new(One(disk.clone(), frozen));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    rt.spawn(async move {
        let _keep = _tx;
        serve(
            listener,
            exports,
            Arc::new(Unobserved),
            Limits::default(),
            rx,
        )
        .await
    });
    (rt, addr, disk)
}

fn tool(name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e} (scripts/test.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn nbdinfo_and_qemu_see_the_size_and_map_of_a_100_tib_export() {
    let size = 100u64 << 40;
    let (_rt, addr, disk) = start(size);
    let url = format!("nbd://{addr}/disk");
    let (ok, out) = tool("nbdinfo", &["--size", &url]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), size.to_string());
    disk.write(5 << 30, b"data", false).unwrap();
    let (ok, out) = tool("nbdinfo", &["--map", &url]);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].contains("hole,zero") && lines[1].contains("data"),
        "{out}"
    );
    let (ok, out) = tool("qemu-img", &["map", "-f", "raw", "--output=json", &url]);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"data\": true") || out.contains("\"data\":true"),
        "{out}"
    );
    assert_eq!(out.matches("\"start\"").count(), 3, "{out}");
}

#[test]
fn qemu_io_writes_and_reads_patterns_at_odd_offsets() {
    let (_rt, addr, _) = start(64 << 20);
    let url = format!("nbd://{addr}/disk");
    let (ok, out) = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 1000001 12345",
            "-c",
            "read -P 0x5a 1000001 12345",
            "-c",
            "write -z 2000000 70000",
            "-c",
            "read -P 0 2000000 70000",
            "-c",
            "discard 0 131072",
            "-c",
            "flush",
            &url,
        ],
    );
    assert!(ok && !out.contains("failed"), "{out}");
    let (ok, out) = tool(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x11 1000001 100", &url],
    );
    assert!(
        out.contains("Pattern verification failed"),
        "a wrong pattern is caught: {ok} {out}"
    );
    let (ok, out) = tool("qemu-io", &["-f", "raw", "-c", "read 67108000 1000", &url]);
    assert!(
        !ok || out.contains("failed"),
        "a read past the end fails: {out}"
    );
}

#[test]
fn nbdcopy_keeps_holes_both_ways_and_a_read_only_export_refuses_writes() {
    let (_rt, addr, _) = start(32 << 20);
    let dir = std::env::temp_dir().join(format!("nbd-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.img");
    let file = std::fs::File::create(&src).unwrap();
    file.set_len(32 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&vec![7u8; 300_000], 10 << 20).unwrap();
    let url = format!("nbd://{addr}/disk");
    let (ok, out) = tool("nbdcopy", &[src.to_str().unwrap(), &url]);
    assert!(ok, "{out}");
    let back = dir.join("back.img");
    let (ok, out) = tool("nbdcopy", &[&url, back.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    let (ok, out) = tool(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src.to_str().unwrap(),
            &url,
        ],
    );
    assert!(ok && out.contains("identical"), "{out}");
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&back).unwrap());
    assert!(
        blocks * 512 < 4 << 20,
        "the copy kept its holes: {} bytes allocated",
        blocks * 512
    );
    let frozen = format!("nbd://{addr}/frozen");
    let (ok, out) = tool("qemu-io", &["-f", "raw", "-c", "write 0 512", &frozen]);
    assert!(
        !ok || out.contains("failed") || out.contains("read-only") || out.contains("Permission"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
