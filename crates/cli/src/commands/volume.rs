//! `aetherflow volume ...`: volumes managed on a running server (its REST API, SPEC §6) or
//! directly in a data directory. Both answer with the same volume objects, printed the same.

use std::io::{self, Write};

use aetherflow_engine::units::{format_bytes, parse_size};
use aetherflow_vm::{Backend, VirtualMemory, VmConfig};
use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cli::{VolumeArgs, VolumeCommand, VolumeTarget};
use crate::exit::{UsageError, SUCCESS};

/// A failure a server answered with: its status and `code` tell a script what happened.
#[derive(Debug)]
pub struct ServerRefused {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {}, {})", self.message, self.status, self.code)
    }
}

impl std::error::Error for ServerRefused {}

/// Where the volumes are.
enum Target {
    Server { url: String, token: Option<String> },
    Local(Box<VirtualMemory>),
}

impl Target {
    fn of(target: &VolumeTarget) -> anyhow::Result<Target> {
        match &target.data_dir {
            Some(dir) => {
                if !dir.join("index.redb").exists() {
                    anyhow::bail!(
                        "{}: no AetherFlow store here (no index.redb); create one with 'aetherflow serve --data-dir {}'",
                        dir.display(),
                        dir.display()
                    );
                }
                let vm = VirtualMemory::open(VmConfig::new(Backend::Local(dir.clone())))
                    .with_context(|| dir.display().to_string())?;
                Ok(Target::Local(Box::new(vm)))
            }
            None => Ok(Target::Server {
                url: target.server.trim_end_matches('/').to_string(),
                token: target.token.clone(),
            }),
        }
    }

    /// Calls a volume route of the server; the JSON answer, or the error it carries.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let Target::Server { url, token } = self else {
            unreachable!("only a server is called")
        };
        let endpoint = format!("{url}{path}");
        let auth = token.as_ref().map(|t| format!("Bearer {t}"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let result = match (method, body) {
            ("GET", _) => {
                let mut r = agent.get(&endpoint);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = agent.delete(&endpoint);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let mut r = agent.post(&endpoint);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send_json(body.unwrap_or_else(|| json!({})))
            }
        };
        let mut response = result.with_context(|| format!("cannot reach {endpoint}"))?;
        let status = response.status().as_u16();
        let value: Value = response
            .body_mut()
            .read_json()
            .with_context(|| format!("{endpoint} did not answer with JSON"))?;
        if !(200..300).contains(&status) {
            return Err(ServerRefused {
                status,
                code: value["code"].as_str().unwrap_or("ERROR").to_string(),
                message: value["error"]
                    .as_str()
                    .unwrap_or("the server refused")
                    .to_string(),
            }
            .into());
        }
        Ok(value)
    }
}

/// A path segment: volume names are letters, digits, `.`, `_` and `-`, but whatever the user
/// typed is escaped so that it reaches the server as one segment.
fn segment(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The fields of a volume object the text output shows.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct View {
    name: String,
    size: u64,
    chunk_size: u32,
    seeded: bool,
    read_only: bool,
    origin: Option<String>,
    created: String,
    open: bool,
    bytes: ViewBytes,
    ratio: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ViewBytes {
    written: u64,
    zeroed: u64,
    physical: u64,
    unique: u64,
    stored: u64,
    buffered: u64,
}

fn kind(v: &View) -> String {
    match (&v.origin, v.read_only) {
        (Some(o), true) => format!("snapshot of {o}"),
        (Some(o), false) => format!("clone of {o}"),
        (None, true) => "snapshot".into(),
        (None, false) => "volume".into(),
    }
}

fn with_bytes(n: u64) -> String {
    format!("{} ({n} bytes)", format_bytes(n))
}

fn print_one(out: &mut impl Write, v: &View) -> io::Result<()> {
    let rows = [
        ("Volume", v.name.clone()),
        ("Kind", kind(v)),
        ("Size", with_bytes(v.size)),
        ("Chunk size", format_bytes(u64::from(v.chunk_size))),
        (
            "Seeded",
            if v.seeded {
                "yes (served once unlocked)"
            } else {
                "no"
            }
            .to_string(),
        ),
        ("Written", with_bytes(v.bytes.written)),
        ("Zeroed", with_bytes(v.bytes.zeroed)),
        ("Unique", with_bytes(v.bytes.unique)),
        ("Stored", with_bytes(v.bytes.stored)),
        (
            "Physical",
            format!("{} (its own, with its map)", with_bytes(v.bytes.physical)),
        ),
        ("Ratio", format!("{:.2}x (written / stored)", v.ratio)),
        ("Buffered", with_bytes(v.bytes.buffered)),
        ("Open", if v.open { "yes" } else { "no" }.to_string()),
        ("Created", v.created.clone()),
    ];
    for (label, value) in rows {
        writeln!(out, "{:<11} {value}", format!("{label}:"))?;
    }
    Ok(())
}

fn print_table(out: &mut impl Write, all: &[View]) -> io::Result<()> {
    if all.is_empty() {
        return writeln!(out, "no volumes");
    }
    let width = all.iter().map(|v| v.name.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<width$}  {:>10}  {:>10}  {:>10}  {:>7}  KIND",
        "NAME", "SIZE", "WRITTEN", "PHYSICAL", "RATIO"
    )?;
    for v in all {
        writeln!(
            out,
            "{:<width$}  {:>10}  {:>10}  {:>10}  {:>6.2}x  {}{}",
            v.name,
            format_bytes(v.size),
            format_bytes(v.bytes.written),
            format_bytes(v.bytes.physical),
            v.ratio,
            kind(v),
            if v.seeded { ", seeded" } else { "" }
        )?;
    }
    Ok(())
}

fn local_value<T: serde::Serialize>(r: aetherflow_vm::Result<T>) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(r?)?)
}

pub fn run(args: VolumeArgs) -> anyhow::Result<u8> {
    let target = Target::of(&args.target)?;
    let json_out = args.target.json;
    // Each command yields a volume object, a list of them, or a message.
    enum Answer {
        One(Value),
        Many(Vec<Value>),
        Done(String),
    }
    let answer = match args.command {
        VolumeCommand::Create { name, size, seed } => {
            let bytes = parse_size(&size).map_err(|e| UsageError(format!("--size: {e}")))?;
            match &target {
                Target::Local(vm) => {
                    let seed = crate::seed::resolve(&seed)?;
                    Answer::One(local_value(vm.create_volume(&name, bytes, seed.as_ref()))?)
                }
                Target::Server { .. } => {
                    let mut body = json!({"name": name, "size": bytes});
                    if let Some(text) = crate::seed::resolve_text(&seed)? {
                        body["seed"] = text.into();
                    }
                    Answer::One(target.call("POST", "/api/volumes", Some(body))?["volume"].take())
                }
            }
        }
        VolumeCommand::List => match &target {
            Target::Local(vm) => Answer::Many(
                vm.volumes()?
                    .into_iter()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?,
            ),
            Target::Server { .. } => {
                let mut v = target.call("GET", "/api/volumes", None)?;
                let list = v["volumes"].take();
                Answer::Many(serde_json::from_value(list).context("unexpected volume list")?)
            }
        },
        VolumeCommand::Info { name } => match &target {
            Target::Local(vm) => Answer::One(local_value(vm.volume_info(&name))?),
            Target::Server { .. } => Answer::One(
                target.call("GET", &format!("/api/volumes/{}", segment(&name)), None)?["volume"]
                    .take(),
            ),
        },
        VolumeCommand::Snapshot { name, new } => match &target {
            Target::Local(vm) => Answer::One(local_value(vm.snapshot_volume(&name, &new))?),
            Target::Server { .. } => Answer::One(
                target.call(
                    "POST",
                    &format!("/api/volumes/{}/snapshot", segment(&name)),
                    Some(json!({ "name": new })),
                )?["volume"]
                    .take(),
            ),
        },
        VolumeCommand::Clone { snapshot, new } => match &target {
            Target::Local(vm) => Answer::One(local_value(vm.clone_volume(&snapshot, &new))?),
            Target::Server { .. } => Answer::One(
                target.call(
                    "POST",
                    &format!("/api/volumes/{}/clone", segment(&snapshot)),
                    Some(json!({ "name": new })),
                )?["volume"]
                    .take(),
            ),
        },
        VolumeCommand::Delete { name } => {
            match &target {
                Target::Local(vm) => vm.delete_volume(&name)?,
                Target::Server { .. } => {
                    target.call("DELETE", &format!("/api/volumes/{}", segment(&name)), None)?;
                }
            }
            Answer::Done(format!("volume {name} deleted"))
        }
        VolumeCommand::Unlock { name, seed } => {
            let Target::Server { .. } = &target else {
                return Err(UsageError(
                    "unlock: a volume's keys live in a running server's memory; use --server"
                        .into(),
                )
                .into());
            };
            let text = crate::seed::resolve_text(&seed)?.ok_or_else(|| {
                UsageError("unlock: give the seed (--seed, AF_SEED or --seed-file)".into())
            })?;
            Answer::One(
                target.call(
                    "POST",
                    &format!("/api/volumes/{}/unlock", segment(&name)),
                    Some(json!({ "seed": text })),
                )?["volume"]
                    .take(),
            )
        }
        VolumeCommand::Lock { name } => {
            let Target::Server { .. } = &target else {
                return Err(UsageError(
                    "lock: a volume's keys live in a running server's memory; use --server".into(),
                )
                .into());
            };
            Answer::One(
                target.call(
                    "POST",
                    &format!("/api/volumes/{}/lock", segment(&name)),
                    None,
                )?["volume"]
                    .take(),
            )
        }
    };
    let mut out = io::stdout().lock();
    match answer {
        Answer::One(v) if json_out => writeln!(out, "{v}")?,
        Answer::Many(v) if json_out => writeln!(out, "{}", Value::Array(v))?,
        Answer::Done(message) if json_out => {
            writeln!(out, "{}", json!({"success": true, "message": message}))?
        }
        Answer::One(v) => {
            let view: View = serde_json::from_value(v).context("unexpected volume shape")?;
            print_one(&mut out, &view)?;
        }
        Answer::Many(v) => {
            let views: Vec<View> = v
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .context("unexpected volume shape")?;
            print_table(&mut out, &views)?;
        }
        Answer::Done(message) => writeln!(out, "{message}")?,
    }
    Ok(SUCCESS)
}
