//! `aetherflow serve`: the REST server on the chosen store until SIGINT or SIGTERM.

use std::net::SocketAddr;

use aetherflow_engine::units::format_bytes;
use aetherflow_server::{AppState, ServerConfig};
use aetherflow_vm::{Backend, S3Options, VirtualMemory, VmConfig};
use anyhow::Context;

use crate::cli::ServeArgs;
use crate::exit::{UsageError, SUCCESS};

/// Which backend the flags name.
fn backend(args: &ServeArgs) -> anyhow::Result<Backend> {
    if args.memory {
        return Ok(Backend::Memory);
    }
    match args.store.as_deref() {
        None => Ok(Backend::Local(args.data_dir.clone())),
        Some("memory://") => Ok(Backend::Memory),
        Some(url) if url.starts_with("s3://") => {
            let grace = args.gc_grace;
            if !grace.is_zero() && grace < std::time::Duration::from_secs(60) {
                return Err(UsageError(format!(
                    "--gc-grace {}: at least 1m (every commit on every server must finish within                      it, and requests may take tens of seconds), or 0 for a bucket only this                      server writes",
                    humantime::format_duration(grace)
                ))
                .into());
            }
            let options = S3Options {
                grace: args.gc_grace,
                // Collect a few times per grace period (at least every 10 s, at most every 5 min).
                sweep_every: Some((args.gc_grace / 3).clamp(
                    std::time::Duration::from_secs(10),
                    std::time::Duration::from_secs(300),
                )),
                commit_uploads: args.commit_uploads,
                ..S3Options::default()
            };
            if args.gc_grace.is_zero() {
                return Ok(Backend::S3(
                    crate::store_url::s3(url)?,
                    S3Options {
                        commit_uploads: args.commit_uploads,
                        ..S3Options::single_writer()
                    },
                ));
            }
            Ok(Backend::S3(crate::store_url::s3(url)?, options))
        }
        Some(url) => match url.strip_prefix("file://") {
            Some(path) if !path.is_empty() => Ok(Backend::Local(path.into())),
            _ => Err(UsageError(format!(
                "--store {url}: expected s3://BUCKET/PREFIX?endpoint=..., file:///DIR or memory://"
            ))
            .into()),
        },
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<u8> {
    limit_malloc_arenas();
    let addr: SocketAddr = args.listen.parse().map_err(|_| {
        UsageError(format!(
            "--listen {}: expected an address such as 127.0.0.1:5000",
            args.listen
        ))
    })?;
    if !addr.ip().is_loopback() && args.token.is_none() && !args.insecure {
        return Err(UsageError(format!(
            "refusing to listen on {addr} without a token: anyone who can reach it could read and \
             delete every block. Set --token (or AF_TOKEN), or pass --insecure if that is really intended"
        ))
        .into());
    }
    let nbd: Option<SocketAddr> = args
        .nbd
        .as_deref()
        .map(|text| {
            text.parse().map_err(|_| {
                UsageError(format!(
                    "--nbd {text}: expected an address such as 127.0.0.1:10809"
                ))
            })
        })
        .transpose()?;
    if let Some(nbd) = nbd {
        if !nbd.ip().is_loopback() && !args.insecure {
            return Err(UsageError(format!(
                "refusing to serve NBD on {nbd}: the NBD protocol carries no authentication, so \
                 anyone who can reach it could read and overwrite every volume. Use a loopback \
                 address (and a tunnel), or pass --insecure if that is really intended"
            ))
            .into());
        }
    }
    if args.token.as_deref() == Some("") {
        return Err(UsageError("--token is empty".into()).into());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AF_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let backend = backend(&args)?;
    let mut config = VmConfig::new(backend.clone());
    config.cache_size = args.cache_size;
    config.capacity = args.capacity;
    config.volume_chunk_size = args.volume_chunk_size;
    let vm = VirtualMemory::open(config).context("opening the store")?;
    let server_config = ServerConfig {
        token: args.token.clone(),
        max_body: args.max_body,
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let store = match &backend {
            Backend::Memory => "in memory (lost when the server stops)".to_string(),
            Backend::Local(dir) => format!("{} (durable)", dir.display()),
            Backend::S3(location, options) => {
                format!(
                    "{location} (shared; gc grace {})",
                    humantime::format_duration(options.grace)
                )
            }
        };
        eprintln!(
            "AetherFlow listening on http://{} - store {store}, capacity {}, cache {}{}",
            listener.local_addr()?,
            format_bytes(args.capacity),
            format_bytes(args.cache_size),
            if args.token.is_some() {
                ", token required"
            } else {
                ""
            }
        );
        let nbd_listener = match nbd {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for NBD on {addr}"))?;
                eprintln!(
                    "AetherFlow serving volumes over NBD on nbd://{} (the export name is the volume's name)",
                    l.local_addr()?
                );
                Some(l)
            }
            None => None,
        };
        let state = AppState::new(vm, server_config);
        // One signal stops both listeners.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let nbd_task = nbd_listener.map(|l| {
            tokio::spawn(aetherflow_server::serve_nbd(
                l,
                state.clone(),
                stopped.clone(),
            ))
        });
        let mut rest_stopped = stopped.clone();
        aetherflow_server::serve(listener, state, async move {
            let _ = rest_stopped.wait_for(|s| *s).await;
        })
        .await?;
        if let Some(task) = nbd_task {
            task.await.context("the NBD listener failed")??;
        }
        eprintln!("AetherFlow stopped; the store is closed");
        anyhow::Ok(())
    })?;
    Ok(SUCCESS)
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core) and keeps what
/// was freed in it; with a blocking pool of many threads passing megabyte buffers around, that
/// doubles resident memory under load for no speed (measured with bench/server.sh). Two arenas
/// per core keep the speed and the memory.
fn limit_malloc_arenas() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // SAFETY: mallopt only changes allocator tuning; called before the server's threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, (2 * cores) as libc::c_int);
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
