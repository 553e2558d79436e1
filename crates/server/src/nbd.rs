//! Volumes over NBD: the protocol layer ([`aetherflow_nbd`]) serves the manager's volumes, one
//! export per volume, by name. Only translation lives here: spans to pieces, allocations to
//! extents, the manager's errors to the errnos a client understands.

use std::sync::Arc;

use aetherflow_nbd::{
    BlockSizes, Errno, Export, ExportError, ExportInfo, ExportResult, Exports, Extent, OpenError,
    Piece,
};
use aetherflow_vm::{Allocation, Error as VmError, Span, StoreError, VirtualMemory, VolumeHandle};

use crate::metrics::Metrics;

/// Largest payload of one read or write: SPEC §6 promises 32 MiB.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Bytes one `NBD_CMD_CACHE` reads ahead at most: it is advisory, and reading more than the
/// cache holds would only evict what was read first.
const CACHE_AHEAD: u64 = 32 << 20;

/// The volumes of a memory manager, as NBD exports.
#[derive(Debug)]
pub struct VolumeExports {
    vm: Arc<VirtualMemory>,
}

impl VolumeExports {
    pub fn new(vm: Arc<VirtualMemory>) -> VolumeExports {
        VolumeExports { vm }
    }
}

fn describe(size: u64, read_only: bool, seeded: bool, origin: Option<&str>) -> String {
    let mut text = format!(
        "{} {}",
        aetherflow_engine::units::format_bytes(size),
        if read_only { "snapshot" } else { "volume" }
    );
    if let Some(origin) = origin {
        text.push_str(&format!(" of {origin}"));
    }
    if seeded {
        text.push_str(", seeded");
    }
    text
}

impl Exports for VolumeExports {
    fn list(&self) -> Vec<(String, String)> {
        match self.vm.volumes() {
            Ok(all) => all
                .into_iter()
                .map(|v| {
                    let text = describe(v.size, v.read_only, v.seeded, v.origin.as_deref());
                    (v.name, text)
                })
                .collect(),
            Err(e) => {
                tracing::error!("nbd: listing volumes failed: {e}");
                Vec::new()
            }
        }
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Export>, OpenError> {
        match self.vm.open_volume(name) {
            Ok(volume) => {
                let description = self
                    .vm
                    .volume_info(name)
                    .map(|v| describe(v.size, v.read_only, v.seeded, v.origin.as_deref()))
                    .unwrap_or_default();
                Ok(Arc::new(VolumeExport {
                    volume,
                    description,
                }))
            }
            Err(VmError::VolumeNotFound(_)) => Err(OpenError::Unknown),
            Err(
                e @ (VmError::VolumeLocked(_)
                | VmError::VolumeRefused(_)
                | VmError::VolumeHeldElsewhere(_)),
            ) => Err(OpenError::Refused(e.to_string())),
            Err(e) => {
                tracing::error!("nbd: opening volume {name} failed: {e}");
                Err(OpenError::Refused(format!(
                    "volume {name} cannot be opened now; the details are in the server's log"
                )))
            }
        }
    }
}

/// One open volume, for the connections that serve it.
struct VolumeExport {
    volume: VolumeHandle,
    description: String,
}

/// The errno for a failure of the manager: what the client can act on. Failures of the store
/// or the data are logged here, once, with their details; the client gets the errno and a
/// short message.
fn errno(volume: &str, e: VmError) -> ExportError {
    let (errno, message) = match &e {
        VmError::VolumeRefused(m) => (Errno::Perm, m.clone()),
        VmError::InvalidArgument(m) => (Errno::Inval, m.clone()),
        VmError::CapacityExceeded { .. } => (Errno::NoSpc, e.to_string()),
        VmError::Store(StoreError::Io(io)) if is_full(io) => {
            tracing::error!("nbd: volume {volume}: the store is full: {io}");
            (Errno::NoSpc, "the store is full".to_string())
        }
        _ => {
            tracing::error!("nbd: volume {volume}: {e}");
            (
                Errno::Io,
                "the request failed on the server; the details are in its log".to_string(),
            )
        }
    };
    ExportError::new(errno, message)
}

/// Whether an I/O error means no space (ENOSPC) or no quota (EDQUOT) is left.
fn is_full(io: &std::io::Error) -> bool {
    matches!(
        io.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

impl VolumeExport {
    fn fail(&self, e: VmError) -> ExportError {
        errno(self.volume.name(), e)
    }
}

impl Export for VolumeExport {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            size: self.volume.size(),
            read_only: self.volume.read_only(),
            block: BlockSizes {
                minimum: 1,
                preferred: self.volume.chunk_size(),
                maximum: MAX_PAYLOAD,
            },
            // Every connection to a volume shares one `Volume`: a flush on any covers all.
            multi_conn: true,
            description: self.description.clone(),
        }
    }

    fn read(&self, offset: u64, len: u32) -> ExportResult<Vec<Piece>> {
        let spans = self
            .volume
            .read_at(offset, len as usize)
            .map_err(|e| self.fail(e))?;
        Ok(pieces(spans))
    }

    fn read_from_memory(&self, offset: u64, len: u32) -> Option<ExportResult<Vec<Piece>>> {
        match self.volume.read_cached(offset, len as usize) {
            Ok(Some(spans)) => Some(Ok(pieces(spans))),
            Ok(None) => None,
            Err(e) => Some(Err(self.fail(e))),
        }
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> ExportResult<()> {
        self.volume
            .write_at(offset, data, fua)
            .map_err(|e| self.fail(e))
    }

    fn write_to_memory(&self, offset: u64, data: &[u8]) -> Option<ExportResult<()>> {
        match self.volume.write_in_memory(offset, data) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(e) => Some(Err(self.fail(e))),
        }
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        punch: bool,
        _fast: bool,
        fua: bool,
    ) -> ExportResult<()> {
        // Always fast: whole chunks change only the map, the parts at either end are one
        // chunk's read-modify-write each; never slower than writing the zeros.
        self.volume
            .write_zeroes(offset, len, punch, fua)
            .map_err(|e| self.fail(e))
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()> {
        self.volume.trim(offset, len, fua).map_err(|e| self.fail(e))
    }

    fn flush(&self) -> ExportResult<()> {
        self.volume.flush().map_err(|e| self.fail(e))
    }

    fn cache(&self, offset: u64, len: u64) -> ExportResult<()> {
        // Reading through the cache, scan or not, is what warming it means.
        let end = offset + len.min(CACHE_AHEAD);
        let mut at = offset;
        while at < end {
            let n = (end - at).min(u64::from(MAX_PAYLOAD));
            self.volume.warm(at, n as usize).map_err(|e| self.fail(e))?;
            at += n;
        }
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> ExportResult<Vec<Extent>> {
        let allocations = self.volume.extents(offset, len).map_err(|e| self.fail(e))?;
        Ok(allocations
            .into_iter()
            .map(|Allocation { len, hole, zero }| Extent { len, hole, zero })
            .collect())
    }
}

fn pieces(spans: Vec<Span>) -> Vec<Piece> {
    spans
        .into_iter()
        .map(|s| match s {
            Span::Data(b) => Piece::Data(b),
            Span::Zeros(n) => Piece::Zeros(n),
        })
        .collect()
}

/// Counts NBD connections and requests into the server's metrics.
#[derive(Debug)]
pub struct NbdObserver {
    metrics: Arc<Metrics>,
}

impl NbdObserver {
    pub fn new(metrics: Arc<Metrics>) -> NbdObserver {
        NbdObserver { metrics }
    }
}

impl aetherflow_nbd::Observer for NbdObserver {
    fn connected(&self) {
        self.metrics.nbd_connected();
    }

    fn disconnected(&self) {
        self.metrics.nbd_disconnected();
    }

    fn request(&self, command: &'static str, bytes: u64, ok: bool) {
        self.metrics.nbd_request(command, bytes, ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_reach_the_client_as_the_errno_it_can_act_on() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let enospc = std::io::Error::from_raw_os_error(28);
        let broken = std::io::Error::from(std::io::ErrorKind::Other);
        let cases = [
            (VmError::VolumeRefused("a snapshot".into()), Errno::Perm),
            (
                VmError::InvalidArgument("past the end".into()),
                Errno::Inval,
            ),
            (VmError::Store(StoreError::Io(full)), Errno::NoSpc),
            (VmError::Store(StoreError::Io(enospc)), Errno::NoSpc),
            (VmError::Store(StoreError::Io(broken)), Errno::Io),
            (
                VmError::VolumeCorrupt {
                    volume: "v".into(),
                    what: "chunk missing".into(),
                },
                Errno::Io,
            ),
            (
                VmError::Store(StoreError::Unavailable("down".into())),
                Errno::Io,
            ),
        ];
        for (e, want) in cases {
            let what = e.to_string();
            assert_eq!(errno("v", e).errno, want, "{what}");
        }
    }
}
