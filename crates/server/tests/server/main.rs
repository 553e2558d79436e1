//! The server over a real socket: endpoints, raw streaming, errors, security, timeouts.

mod dashboard;
mod endpoints;
mod s3;
mod security;
mod volumes;

use std::net::SocketAddr;
use std::time::Duration;

use aetherflow_engine::KdfParams;
use aetherflow_server::{AppState, ServerConfig};
use aetherflow_vm::{Backend, VirtualMemory, VmConfig};

/// A server on an ephemeral port, with its NBD listener on another, running on its own runtime;
/// stops when dropped.
#[derive(Debug)]
pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    /// `nbd://127.0.0.1:PORT`: append `/VOLUME`.
    pub nbd: String,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::with(|_, _| {})
    }

    /// Starts a server after `tune` adjusts the configurations (cheap seeds by default).
    pub fn with(tune: impl FnOnce(&mut VmConfig, &mut ServerConfig)) -> TestServer {
        let mut vm_config = VmConfig::new(Backend::Memory);
        vm_config.kdf = KdfParams::MINIMUM;
        let mut config = ServerConfig::default();
        tune(&mut vm_config, &mut config);
        let vm = VirtualMemory::open(vm_config).unwrap();
        let state = AppState::new(vm, config);
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let nbd_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        nbd_listener.set_nonblocking(true).unwrap();
        let nbd = nbd_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let nbd_listener = tokio::net::TcpListener::from_std(nbd_listener).unwrap();
                let nbd = tokio::spawn(aetherflow_server::serve_nbd(
                    nbd_listener,
                    state.clone(),
                    stopped.clone(),
                ));
                let mut rest_stopped = stopped.clone();
                aetherflow_server::serve(listener, state, async move {
                    let _ = rest_stopped.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
                nbd.await.unwrap().unwrap();
            });
        });
        TestServer {
            url: format!("http://{addr}"),
            addr,
            nbd: format!("nbd://{nbd}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops accepting, waits for requests in flight, and returns once the server is gone.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client that returns error statuses as responses, not errors.
pub fn client() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    )
}

/// Status and JSON body of a response.
pub fn json(mut response: ureq::http::Response<ureq::Body>) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_json()
        .unwrap_or(serde_json::Value::Null);
    (status, body)
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// Text-like, compressible content.
pub fn text(len: usize, salt: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 40);
    let mut i = salt;
    while out.len() < len {
        out.extend_from_slice(format!("record {i} value {} ok\n", i * 31 % 977).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}
