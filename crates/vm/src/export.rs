//! Export and import: every block and the statistics as one JSON document, streamed both ways.
//!
//! ```text
//! {"success": true, "format": "aetherflow-export/1", "exportedAt": "<RFC 3339>",
//!  "stats": {<the summary figures>},
//!  "blocks": [{"id", "originalBytes", "checksum", "seeded", "accessCount", "created",
//!              "data": "<base64>"}, ...]}
//! ```
//!
//! Export writes one block at a time and base64-encodes its content while it streams out of the
//! store, so memory stays constant whatever the store holds. A seeded block's data is included
//! only when the export is given its seed (`"data": null` and `"dataOmitted"` otherwise): seeds
//! are never stored, so there is nothing else to encrypt it with. Import reads the document as a
//! stream too, holding one block at a time, and keeps block ids, so references to them stay valid.

use std::fmt;
use std::io::{Read, Write};

use aetherflow_engine::crypto::Seed;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::read::Caching;
use crate::VirtualMemory;

/// Identifies the document layout.
pub const FORMAT: &str = "aetherflow-export/1";

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSummary {
    pub blocks: u64,
    pub with_data: u64,
}

/// What an import did.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportSummary {
    pub imported: u64,
    pub imported_bytes: u64,
    /// Blocks left out, with why (no data in the document, no seed for a seeded block, id taken).
    pub skipped: Vec<(String, String)>,
}

impl VirtualMemory {
    /// Writes the export document to `out`. With `with_data`, each block's content is included
    /// (seeded blocks only under their `seed`).
    pub fn export(
        &self,
        out: &mut dyn Write,
        with_data: bool,
        seed: Option<&Seed>,
    ) -> Result<ExportSummary> {
        let mut summary = ExportSummary::default();
        let exported_at =
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        write!(
            out,
            "{{\"success\":true,\"format\":\"{FORMAT}\",\"exportedAt\":\"{exported_at}\",\"stats\":{},\"blocks\":[",
            serde_json::to_string(&self.summary()).map_err(std::io::Error::other)?
        )?;
        let mut failure = None;
        self.block_details(&mut |detail| {
            let result = (|| -> Result<()> {
                if summary.blocks > 0 {
                    out.write_all(b",")?;
                }
                summary.blocks += 1;
                let mut head = serde_json::to_string(&detail).map_err(std::io::Error::other)?;
                head.pop(); // the closing brace: the data field follows
                out.write_all(head.as_bytes())?;
                if !with_data {
                    out.write_all(b"}")?;
                    return Ok(());
                }
                let id = crate::parse_block_id(&detail.id)?;
                if detail.seeded && seed.is_none() {
                    out.write_all(b",\"data\":null,\"dataOmitted\":\"seed required\"}")?;
                    return Ok(());
                }
                // Check the seed before writing a byte of data, so a wrong seed leaves no half
                // field. A block freed since the listing is left out; damage found while its
                // data streams aborts the export, so that no backup is silently incomplete.
                match self.block_size(id, seed) {
                    Err(Error::WrongSeed(_)) => {
                        out.write_all(b",\"data\":null,\"dataOmitted\":\"another seed\"}")?;
                        return Ok(());
                    }
                    Err(Error::NotFound(_)) => {
                        out.write_all(
                            b",\"data\":null,\"dataOmitted\":\"freed during the export\"}",
                        )?;
                        return Ok(());
                    }
                    other => other?,
                };
                out.write_all(b",\"data\":\"")?;
                {
                    let mut encoder = base64::write::EncoderWriter::new(&mut *out, &STANDARD);
                    self.stream(id, seed, None, &mut encoder, Caching::Skip)?;
                    encoder.finish()?;
                }
                out.write_all(b"\"}")?;
                summary.with_data += 1;
                Ok(())
            })();
            match result {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        out.write_all(b"]}")?;
        out.flush()?;
        Ok(summary)
    }

    /// Restores the blocks of an export document read from `input`; seeded blocks are
    /// allocated under `seed`. Blocks are committed one by one: on an error, those before it stay.
    pub fn import(&self, input: impl Read, seed: Option<&Seed>) -> Result<ImportSummary> {
        let mut summary = ImportSummary::default();
        let mut de = serde_json::Deserializer::from_reader(input);
        let mut failure = None;
        let result = Document {
            vm: self,
            seed,
            summary: &mut summary,
            failure: &mut failure,
        }
        .deserialize(&mut de);
        if let Some(e) = failure {
            return Err(e);
        }
        result.and_then(|()| de.end()).map_err(|e| {
            if e.is_io() {
                // The input itself failed (a body over its limit, a stalled client): the
                // caller's reader says why, unchanged.
                Error::Io(e.into())
            } else {
                Error::InvalidArgument(format!("import document: {e}"))
            }
        })?;
        Ok(summary)
    }

    fn import_block(
        &self,
        block: ImportBlock,
        seed: Option<&Seed>,
        summary: &mut ImportSummary,
    ) -> Result<()> {
        // Every id, checksum and data field is checked, even of a block that will be skipped:
        // a document with a malformed one is not an export document.
        let id = crate::parse_block_id(&block.id)?;
        let seeded = block.seeded();
        if let Some(checksum) = &block.checksum {
            if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::InvalidArgument(format!(
                    "block {id}: checksum is not 64 hexadecimal digits"
                )));
            }
        }
        let Some(data) = block.data else {
            summary
                .skipped
                .push((block.id, "no data in the document".into()));
            return Ok(());
        };
        let bytes = STANDARD.decode(data.as_bytes()).map_err(|e| {
            Error::InvalidArgument(format!("block {id}: data is not valid base64: {e}"))
        })?;
        if seeded && seed.is_none() {
            summary.skipped.push((
                block.id,
                "seeded block: a seed is required to import it".into(),
            ));
            return Ok(());
        }
        if let Some(expected) = &block.checksum {
            let actual = aetherflow_engine::hex::encode(&Sha256::digest(&bytes));
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(Error::InvalidArgument(format!(
                    "block {id}: data does not match its checksum"
                )));
            }
        }
        let block_seed = if seeded { seed } else { None };
        match self.allocate_as(id, &bytes[..], Some(bytes.len() as u64), block_seed) {
            Ok(()) => {
                summary.imported += 1;
                summary.imported_bytes += bytes.len() as u64;
                Ok(())
            }
            Err(Error::AlreadyExists(_)) => {
                summary
                    .skipped
                    .push((id.to_string(), "a block with this id already exists".into()));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// One block of an import document; other fields are ignored.
#[derive(Deserialize)]
struct ImportBlock {
    id: String,
    #[serde(default)]
    data: Option<String>,
    /// `null` and absent both mean false (the documented schema allows null).
    #[serde(default)]
    seeded: Option<bool>,
    #[serde(default)]
    checksum: Option<String>,
}

impl ImportBlock {
    fn seeded(&self) -> bool {
        self.seeded == Some(true)
    }
}

/// The top-level object: only `blocks` matters, and it is consumed element by element.
struct Document<'a> {
    vm: &'a VirtualMemory,
    seed: Option<&'a Seed>,
    summary: &'a mut ImportSummary,
    failure: &'a mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AetherFlow export document (an object with \"blocks\")")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut saw_blocks = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "blocks" {
                saw_blocks = true;
                map.next_value_seed(Blocks {
                    doc: &mut *self.summary,
                    vm: self.vm,
                    seed: self.seed,
                    failure: &mut *self.failure,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !saw_blocks {
            return Err(serde::de::Error::missing_field("blocks"));
        }
        Ok(())
    }
}

struct Blocks<'a> {
    doc: &'a mut ImportSummary,
    vm: &'a VirtualMemory,
    seed: Option<&'a Seed>,
    failure: &'a mut Option<Error>,
}

impl<'de> DeserializeSeed<'de> for Blocks<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Blocks<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of blocks")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(block) = seq.next_element::<ImportBlock>()? {
            if let Err(e) = self.vm.import_block(block, self.seed, self.doc) {
                *self.failure = Some(e);
                return Err(serde::de::Error::custom("import stopped"));
            }
        }
        Ok(())
    }
}
