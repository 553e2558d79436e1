//! Getting the seed from the flag, the environment or a file, without echoing it anywhere.

use aetherflow_engine::Seed;
use anyhow::Context;

use crate::cli::SeedArgs;

pub fn resolve(args: &SeedArgs) -> anyhow::Result<Option<Seed>> {
    if let Some(path) = &args.seed_file {
        let mut bytes = std::fs::read(path)
            .with_context(|| format!("{}: cannot read the seed file", path.display()))?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        return Ok(Some(
            Seed::new(bytes).with_context(|| format!("{}", path.display()))?,
        ));
    }
    match &args.seed {
        Some(seed) => Ok(Some(Seed::new(seed.as_bytes().to_vec())?)),
        None => Ok(None),
    }
}
