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

/// The seed as text, for sending to a server in a JSON body (which carries text only).
pub fn resolve_text(args: &SeedArgs) -> anyhow::Result<Option<String>> {
    if let Some(path) = &args.seed_file {
        let mut text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "{}: cannot read the seed file as text (UTF-8)",
                path.display()
            )
        })?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        return non_empty(text).map(Some);
    }
    args.seed.clone().map(non_empty).transpose()
}

fn non_empty(text: String) -> anyhow::Result<String> {
    if text.is_empty() {
        anyhow::bail!("the seed is empty");
    }
    Ok(text)
}
