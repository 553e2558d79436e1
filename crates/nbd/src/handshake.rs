//! The fixed newstyle handshake: the greeting, then options until the client picks an export
//! (`NBD_OPT_GO` or `NBD_OPT_EXPORT_NAME`) or leaves.
//!
//! Every option gets exactly one final reply, and its payload is always read whole first, so an
//! option this server does not know leaves the stream in step. Option payloads are parsed by
//! pure functions ([`parse_info_request`], [`parse_meta_request`]) that a fuzzer drives.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::export::{Export, ExportInfo, Exports, OpenError};
use crate::reply::Framing;
use crate::wire::*;

/// Options longer than this end the connection: every real option is a few hundred bytes.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// A client that sends more options than this without choosing an export is dropped.
pub const MAX_OPTIONS: usize = 128;
/// The id of `base:allocation` on every connection.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What the handshake agreed on: the export and how to speak about it.
pub struct Negotiated {
    pub export: Arc<dyn Export>,
    pub info: ExportInfo,
    pub framing: Framing,
    /// `base:allocation` was selected for this export.
    pub block_status: bool,
    pub name: String,
}

impl std::fmt::Debug for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiated")
            .field("name", &self.name)
            .field("framing", &self.framing)
            .field("block_status", &self.block_status)
            .finish()
    }
}

/// Why a handshake ended without an export.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol (bad magic, unknown client flags, an option too large,
    /// too many options); the connection is dropped.
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The client asked to leave (`NBD_OPT_ABORT`), or named an export that does not exist
    /// with `NBD_OPT_EXPORT_NAME` (which has no error reply).
    #[error("{0}")]
    Left(String),
}

/// The export name and the information requested by `NBD_OPT_INFO` / `NBD_OPT_GO`, or `None`
/// when the payload is malformed.
pub fn parse_info_request(payload: &[u8]) -> Option<(String, Vec<u16>)> {
    let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_STRING {
        return None;
    }
    let name = std::str::from_utf8(payload.get(4..4 + len)?).ok()?;
    let rest = &payload[4 + len..];
    let count = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let items = rest.get(2..)?;
    if items.len() != 2 * count || name.contains('\0') {
        return None;
    }
    let infos = items
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name.to_string(), infos))
}

/// The export name and queries of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`,
/// or `None` when the payload is malformed.
pub fn parse_meta_request(payload: &[u8]) -> Option<(String, Vec<String>)> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let part = payload.get(at..at.checked_add(n)?)?;
        at += n;
        Some(part)
    };
    let string = |bytes: &[u8]| -> Option<String> {
        let s = std::str::from_utf8(bytes).ok()?;
        (!s.contains('\0')).then(|| s.to_string())
    };
    let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    if len > MAX_STRING {
        return None;
    }
    let name = string(take(len)?)?;
    let count = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
    // Each query takes at least four bytes: a hostile count cannot make us allocate.
    if count > payload.len() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
        if len > MAX_STRING {
            return None;
        }
        queries.push(string(take(len)?)?);
    }
    (at == payload.len()).then_some((name, queries))
}

/// The transmission flags of an export under `framing`.
pub fn transmission_flags(info: &ExportInfo, framing: Framing) -> u16 {
    let mut flags = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_CACHE;
    if info.read_only {
        flags |= TF_READ_ONLY;
    } else {
        flags |= TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
    }
    if info.multi_conn {
        flags |= TF_CAN_MULTI_CONN;
    }
    if framing != Framing::Simple {
        // A read is always answered whole in order, so never split: DF costs nothing.
        flags |= TF_SEND_DF;
    }
    flags
}

struct Options<'a, S> {
    stream: &'a mut S,
    exports: &'a dyn Exports,
    framing: Framing,
    /// The export the last SET_META_CONTEXT was for, if it selected `base:allocation`.
    meta_for: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Options<'_, S> {
    async fn reply(&mut self, option: u32, kind: u32, data: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(20 + data.len());
        out.extend_from_slice(&REP_MAGIC.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        self.stream.write_all(&out).await
    }

    async fn error(&mut self, option: u32, kind: u32, message: &str) -> std::io::Result<()> {
        self.reply(option, kind, message.as_bytes()).await?;
        self.stream.flush().await
    }

    /// Sends the information replies of INFO or GO for `info`, then the ACK.
    async fn describe(
        &mut self,
        option: u32,
        name: &str,
        requested: &[u16],
        info: &ExportInfo,
    ) -> std::io::Result<()> {
        // NBD_INFO_EXPORT is owed even unasked (qemu never asks); BLOCK_SIZE is sent always
        // too: both target clients ask for it, and its values are valid for anyone.
        let mut export = Vec::with_capacity(12);
        export.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        export.extend_from_slice(&info.size.to_be_bytes());
        export.extend_from_slice(&transmission_flags(info, self.framing).to_be_bytes());
        self.reply(option, REP_INFO, &export).await?;
        let mut block = Vec::with_capacity(14);
        block.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        block.extend_from_slice(&info.block.minimum.to_be_bytes());
        block.extend_from_slice(&info.block.preferred.to_be_bytes());
        block.extend_from_slice(&info.block.maximum.to_be_bytes());
        self.reply(option, REP_INFO, &block).await?;
        if requested.contains(&INFO_NAME) {
            let mut data = INFO_NAME.to_be_bytes().to_vec();
            data.extend_from_slice(name.as_bytes());
            self.reply(option, REP_INFO, &data).await?;
        }
        if requested.contains(&INFO_DESCRIPTION) && !info.description.is_empty() {
            let mut data = INFO_DESCRIPTION.to_be_bytes().to_vec();
            data.extend_from_slice(truncate(&info.description).as_bytes());
            self.reply(option, REP_INFO, &data).await?;
        }
        self.reply(option, REP_ACK, &[]).await?;
        self.stream.flush().await
    }

    /// LIST_META_CONTEXT and SET_META_CONTEXT.
    async fn meta(&mut self, option: u32, payload: &[u8]) -> std::io::Result<()> {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // A SET replaces the selection, even when it fails.
            self.meta_for = None;
            if self.framing == Framing::Simple {
                return self
                    .error(
                        option,
                        REP_ERR_INVALID,
                        "structured replies come first: NBD_OPT_STRUCTURED_REPLY",
                    )
                    .await;
            }
        }
        let Some((name, queries)) = parse_meta_request(payload) else {
            return self
                .error(
                    option,
                    REP_ERR_INVALID,
                    "malformed metadata context request",
                )
                .await;
        };
        if let Err(OpenError::Unknown) = self.exports.open(&name) {
            return self
                .error(
                    option,
                    REP_ERR_UNKNOWN,
                    &format!("no export named {name:?}"),
                )
                .await;
        }
        let wanted = if set {
            queries.iter().any(|q| q == BASE_ALLOCATION)
        } else {
            queries.is_empty() || queries.iter().any(|q| q == BASE_ALLOCATION || q == "base:")
        };
        if wanted {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            let mut data = id.to_be_bytes().to_vec();
            data.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.reply(option, REP_META_CONTEXT, &data).await?;
            if set {
                self.meta_for = Some(name);
            }
        }
        self.reply(option, REP_ACK, &[]).await?;
        self.stream.flush().await
    }
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(MAX_STRING);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Runs the handshake on `stream`. `Ok` with the chosen export starts transmission; the
/// caller bounds the time it may take. With `shutting_down`, every option is answered
/// `NBD_REP_ERR_SHUTDOWN` and the connection ends.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    exports: &dyn Exports,
    shutting_down: &(dyn Fn() -> bool + Sync),
) -> Result<Negotiated, HandshakeError> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting).await?;
    stream.flush().await?;
    let client = stream.read_u32().await?;
    if client & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(HandshakeError::Violation(format!(
            "unknown client flags {client:#x}"
        )));
    }
    let fixed = client & FLAG_C_FIXED_NEWSTYLE != 0;
    let no_zeroes = client & FLAG_C_NO_ZEROES != 0;
    let mut o = Options {
        stream,
        exports,
        framing: Framing::Simple,
        meta_for: None,
    };
    for _ in 0..MAX_OPTIONS {
        let magic = o.stream.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(HandshakeError::Violation(format!(
                "option magic {magic:#x} is not IHAVEOPT"
            )));
        }
        let option = o.stream.read_u32().await?;
        let len = o.stream.read_u32().await?;
        if len > MAX_OPTION_LEN {
            return Err(HandshakeError::Violation(format!(
                "option {option} of {len} bytes (at most {MAX_OPTION_LEN})"
            )));
        }
        let mut payload = vec![0u8; len as usize];
        o.stream.read_exact(&mut payload).await?;
        if !fixed && option != OPT_EXPORT_NAME {
            return Err(HandshakeError::Violation(
                "only NBD_OPT_EXPORT_NAME without fixed newstyle".into(),
            ));
        }
        if shutting_down() {
            if option == OPT_EXPORT_NAME {
                return Err(HandshakeError::Left("server shutting down".into()));
            }
            o.error(option, REP_ERR_SHUTDOWN, "the server is shutting down")
                .await?;
            return Err(HandshakeError::Left("server shutting down".into()));
        }
        match option {
            OPT_EXPORT_NAME => {
                if o.framing == Framing::Extended {
                    return Err(HandshakeError::Violation(
                        "NBD_OPT_EXPORT_NAME after extended headers".into(),
                    ));
                }
                let name = String::from_utf8_lossy(&payload).into_owned();
                let export = exports.open(&name).map_err(|e| {
                    HandshakeError::Left(format!("export {name:?} cannot be opened: {e:?}"))
                })?;
                let info = export.info();
                let mut out = Vec::with_capacity(134);
                out.extend_from_slice(&info.size.to_be_bytes());
                out.extend_from_slice(&transmission_flags(&info, o.framing).to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                o.stream.write_all(&out).await?;
                o.stream.flush().await?;
                let block_status = o.meta_for.as_deref() == Some(name.as_str());
                return Ok(Negotiated {
                    export,
                    info,
                    framing: o.framing,
                    block_status,
                    name,
                });
            }
            OPT_ABORT => {
                // The client may already be gone: a failed ACK is no error.
                let _ = o.error(option, REP_ACK, "").await;
                return Err(HandshakeError::Left("the client aborted".into()));
            }
            OPT_LIST => {
                if !payload.is_empty() {
                    o.error(option, REP_ERR_INVALID, "NBD_OPT_LIST has no payload")
                        .await?;
                    continue;
                }
                for (name, description) in exports.list() {
                    let name = truncate(&name);
                    let description = truncate(&description);
                    let mut data = (name.len() as u32).to_be_bytes().to_vec();
                    data.extend_from_slice(name.as_bytes());
                    data.extend_from_slice(description.as_bytes());
                    o.reply(option, REP_SERVER, &data).await?;
                }
                o.reply(option, REP_ACK, &[]).await?;
                o.stream.flush().await?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, requested)) = parse_info_request(&payload) else {
                    o.error(option, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO request")
                        .await?;
                    continue;
                };
                let export = match exports.open(&name) {
                    Ok(export) => export,
                    Err(OpenError::Unknown) => {
                        o.error(
                            option,
                            REP_ERR_UNKNOWN,
                            &format!("no export named {name:?}"),
                        )
                        .await?;
                        continue;
                    }
                    Err(OpenError::Refused(why)) => {
                        o.error(option, REP_ERR_POLICY, truncate(&why)).await?;
                        continue;
                    }
                };
                let info = export.info();
                o.describe(option, &name, &requested, &info).await?;
                if option == OPT_GO {
                    let block_status = o.meta_for.as_deref() == Some(name.as_str());
                    return Ok(Negotiated {
                        export,
                        info,
                        framing: o.framing,
                        block_status,
                        name,
                    });
                }
            }
            OPT_STRUCTURED_REPLY => {
                let (kind, message) = match o.framing {
                    _ if !payload.is_empty() => (REP_ERR_INVALID, "no payload expected"),
                    Framing::Extended => {
                        (REP_ERR_EXT_HEADER_REQD, "extended headers are on already")
                    }
                    _ => {
                        o.framing = Framing::Structured;
                        (REP_ACK, "")
                    }
                };
                o.error(option, kind, message).await?;
            }
            OPT_EXTENDED_HEADERS => {
                let (kind, message) = match o.framing {
                    _ if !payload.is_empty() => (REP_ERR_INVALID, "no payload expected"),
                    Framing::Extended => (REP_ERR_INVALID, "extended headers are on already"),
                    _ => {
                        o.framing = Framing::Extended;
                        (REP_ACK, "")
                    }
                };
                o.error(option, kind, message).await?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => o.meta(option, &payload).await?,
            OPT_STARTTLS => {
                o.error(option, REP_ERR_UNSUP, "TLS is not offered by this server")
                    .await?
            }
            other => {
                o.error(
                    option,
                    REP_ERR_UNSUP,
                    &format!("option {other} is not supported"),
                )
                .await?
            }
        }
    }
    Err(HandshakeError::Violation(format!(
        "more than {MAX_OPTIONS} options without choosing an export"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_payload(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut p = (name.len() as u32).to_be_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            p.extend_from_slice(&i.to_be_bytes());
        }
        p
    }

    #[test]
    fn info_requests_parse_and_malformed_ones_are_refused() {
        assert_eq!(
            parse_info_request(&info_payload("vol", &[3, 1])),
            Some(("vol".to_string(), vec![3, 1]))
        );
        assert_eq!(
            parse_info_request(&info_payload("", &[])),
            Some((String::new(), vec![]))
        );
        let good = info_payload("vol", &[3]);
        for cut in 0..good.len() {
            assert_eq!(parse_info_request(&good[..cut]), None, "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_info_request(&long), None);
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_info_request(&huge), None);
    }

    #[test]
    fn meta_requests_parse_and_malformed_ones_are_refused() {
        let mut p = 3u32.to_be_bytes().to_vec();
        p.extend_from_slice(b"vol");
        p.extend_from_slice(&2u32.to_be_bytes());
        for q in ["base:allocation", "qemu:dirty-bitmap:x"] {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q.as_bytes());
        }
        let (name, queries) = parse_meta_request(&p).unwrap();
        assert_eq!(name, "vol");
        assert_eq!(queries, ["base:allocation", "qemu:dirty-bitmap:x"]);
        for cut in 0..p.len() {
            assert_eq!(parse_meta_request(&p[..cut]), None, "cut at {cut}");
        }
        let mut many = 0u32.to_be_bytes().to_vec();
        many.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_request(&many), None);
    }
}
