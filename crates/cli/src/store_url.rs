//! Store URLs given on the command line.

use aetherflow_vm::S3Location;

use crate::exit::UsageError;

/// Parses an `s3://` URL; a malformed one is a usage error that says what is expected.
pub fn s3(url: &str) -> Result<S3Location, UsageError> {
    url.parse()
        .map_err(|e: String| UsageError(format!("--store: {e}")))
}
