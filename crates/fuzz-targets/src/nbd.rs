//! The NBD server's decoders: request headers and their checks, option payloads, and a whole
//! session of arbitrary client bytes against a small export in memory.

use std::sync::{Arc, Mutex};

use aetherflow_nbd::handshake::{parse_info_request, parse_meta_request};
use aetherflow_nbd::request::{check, parse_header, payload_len, Session};
use aetherflow_nbd::wire::{EXTENDED_REQUEST_LEN, REQUEST_LEN};
use aetherflow_nbd::{
    BlockSizes, Export, ExportInfo, ExportResult, Exports, Extent, Limits, OpenError, Piece,
};
use bytes::Bytes;

/// A header and a session, both from the input; the check must never panic and must agree
/// with the header on what it names.
pub fn nbd_request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let extended = mode & 1 != 0;
    let len = if extended {
        EXTENDED_REQUEST_LEN
    } else {
        REQUEST_LEN
    };
    let Some(bytes) = rest.get(..len) else { return };
    let mut header = bytes.to_vec();
    if mode & 2 != 0 {
        // Reach past the magic check.
        let magic: u32 = if extended { 0x21e4_1c71 } else { 0x2560_9513 };
        header[..4].copy_from_slice(&magic.to_be_bytes());
    }
    let Ok(h) = parse_header(&header, extended) else {
        return;
    };
    let size = rest.get(len..len + 8).map_or(1 << 30, |b| {
        u64::from_be_bytes(b.try_into().expect("8 bytes"))
    });
    let session = Session {
        extended,
        structured: extended || mode & 4 != 0,
        block_status: mode & 8 != 0,
        size,
        read_only: mode & 16 != 0,
        max_payload: 32 << 20,
    };
    let _ = payload_len(&h, &session);
    if let Ok(command) = check(&h, &session) {
        let _ = command.name();
    }
}

/// The payloads of NBD_OPT_INFO / GO and of the metadata-context options.
pub fn nbd_options(data: &[u8]) {
    let _ = parse_info_request(data);
    let _ = parse_meta_request(data);
}

/// A 1 MiB export in memory.
struct Ram(Mutex<Vec<u8>>);

impl Export for Ram {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            size: 1 << 20,
            read_only: false,
            block: BlockSizes {
                minimum: 1,
                preferred: 4096,
                maximum: 32 << 20,
            },
            multi_conn: true,
            description: String::new(),
        }
    }
    fn read(&self, offset: u64, len: u32) -> ExportResult<Vec<Piece>> {
        let ram = self.0.lock().expect("ram lock");
        let at = offset as usize;
        Ok(vec![Piece::Data(Bytes::copy_from_slice(
            &ram[at..at + len as usize],
        ))])
    }
    fn write(&self, offset: u64, data: &[u8], _fua: bool) -> ExportResult<()> {
        let at = offset as usize;
        self.0.lock().expect("ram lock")[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _p: bool,
        _f: bool,
        _u: bool,
    ) -> ExportResult<()> {
        let at = offset as usize;
        self.0.lock().expect("ram lock")[at..at + len as usize].fill(0);
        Ok(())
    }
    fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> ExportResult<()> {
        Ok(())
    }
    fn flush(&self) -> ExportResult<()> {
        Ok(())
    }
    fn cache(&self, _offset: u64, _len: u64) -> ExportResult<()> {
        Ok(())
    }
    fn extents(&self, _offset: u64, len: u64) -> ExportResult<Vec<Extent>> {
        Ok(vec![Extent {
            len,
            hole: false,
            zero: false,
        }])
    }
}

struct OneExport(Arc<Ram>);

impl Exports for OneExport {
    fn list(&self) -> Vec<(String, String)> {
        vec![("ram".into(), String::new())]
    }
    fn open(&self, name: &str) -> Result<Arc<dyn Export>, OpenError> {
        match name {
            "" | "ram" => Ok(self.0.clone()),
            _ => Err(OpenError::Unknown),
        }
    }
}

thread_local! {
    /// One runtime and one export for all inputs of a thread: building them per input cost
    /// far more than serving the input.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    static RAM: Arc<Ram> = Arc::new(Ram(Mutex::new(vec![0; 1 << 20])));
}

/// Arbitrary client bytes through a whole server connection: the handshake, then requests.
pub fn nbd_session(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ram = RAM.with(Arc::clone);
    // Each input starts from a zeroed export, so that a finding replays alone.
    ram.0.lock().expect("ram lock").fill(0);
    let exports: Arc<dyn Exports> = Arc::new(OneExport(ram));
    let input = data.to_vec();
    RUNTIME.with(|runtime| {
        runtime.block_on(async move {
            let (client, server) = tokio::io::duplex(1 << 20);
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let limits = Limits {
                handshake_timeout: std::time::Duration::from_secs(1),
                ..Limits::default()
            };
            let served = tokio::spawn(aetherflow_nbd::serve_connection(
                server,
                exports,
                Arc::new(aetherflow_nbd::Unobserved),
                limits,
                shutdown,
            ));
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let drain = tokio::spawn(async move {
                let mut sink = vec![0u8; 64 * 1024];
                while from_server.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            });
            let _ = to_server.write_all(&input).await;
            let _ = to_server.shutdown().await;
            let _ = served.await;
            drain.abort();
            let _ = drain.await;
        })
    });
}
