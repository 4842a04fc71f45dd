//! Shared helpers of the integration tests: the lock that serialises heavy tests, child runs
//! with an environment, seeded random tensors, free loopback ports, real server processes
//! stopped by PID on drop, and a tiny loopback HTTP server whose replies a test scripts
//! (garbage, 500s, slow answers, too few choices, stale versions).
#![allow(dead_code)]

pub mod served;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held by every test that starts an inference server (vLLM, SGLang, llama-server) or runs a
/// long CPU job (a `cures run`, fuzzing, SmolLM2): such tests run one at a time, as they did
/// when each file was its own binary. A test that panicked while holding it poisons the mutex;
/// the guard is recovered, so one failure does not fail every later heavy test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// For a test that needs environment variables set: when `vars[0]` is not set in this process,
/// run the test `name` (module path, e.g. `server_faults::api_key...`) again in a child process
/// of this test binary with `vars` set, assert that it passed, and return true (the caller
/// returns). In the child, returns false and the test body runs. No test calls `set_var`,
/// which would race with other threads (and C code) reading the environment.
pub fn rerun_with_env(name: &str, vars: &[(&str, &str)]) -> bool {
    let Some((first, _)) = vars.first() else {
        return false;
    };
    if std::env::var_os(first).is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--test-threads=1"]);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("rerun the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child run of {name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Seeded N(0, 1) tensors from a ChaCha stream (libtorch's global generator is shared by every
/// test in the process).
pub struct Rng(rand_chacha::ChaCha8Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        use rand::SeedableRng;
        Rng(rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    /// An f32 CPU tensor of `shape` with N(0, 1) entries.
    pub fn randn(&mut self, shape: &[i64]) -> tch::Tensor {
        use rand_distr::{Distribution, StandardNormal};
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut self.0)).collect();
        tch::Tensor::from_slice(&v).view(shape)
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port")
}

/// Wait until `GET url` answers 200 (or `timeout` passes).
pub fn wait_healthy(url: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if http_get_status(url) == Some(200) {
            return true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Status of a plain `GET` (HTTP/1.1, no keep-alive), or None when nothing answers.
pub fn http_get_status(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A server process and everything it spawned (one process group), killed and reaped on drop.
pub struct ServerProc {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl ServerProc {
    /// Spawn `cmd` (stdout/stderr to `log`) and wait for `GET /health` on `port`.
    pub fn start(mut cmd: Command, port: u16, log: &Path, timeout: Duration) -> ServerProc {
        let f = std::fs::File::create(log).expect("log file");
        let f2 = f.try_clone().expect("log file");
        // Its own process group, so `kill` reaches everything it starts (vLLM's engine core and
        // worker, SGLang's scheduler), not only the launcher.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .expect("cannot spawn the server");
        let mut p = ServerProc {
            child: Some(child),
            port,
            log: log.to_path_buf(),
        };
        if !wait_healthy(&p.url("/health"), timeout) {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            p.kill();
            panic!("server on port {port} did not become healthy:\n{tail}");
        }
        p
    }

    /// `http://127.0.0.1:PORT` + route.
    pub fn url(&self, route: &str) -> String {
        format!("http://127.0.0.1:{}{route}", self.port)
    }

    /// Kill (SIGKILL) the server's whole process group and reap the launcher.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: a plain syscall; the group id is the launcher's pid (process_group(0)).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// llama-server binary and SmolLM2 files from the environment (scripts/test.sh exports them);
/// None (the test is skipped with a note) when absent.
pub struct LlamaEnv {
    pub bin: PathBuf,
    pub gguf: PathBuf,
    pub hf_dir: PathBuf,
}

pub fn llama_env() -> Option<LlamaEnv> {
    let get = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.exists())
    };
    match (
        get("CURES_LLAMA_SERVER"),
        get("CURES_SMOLLM2_GGUF"),
        get("CURES_SMOLLM2_DIR"),
    ) {
        (Some(bin), Some(gguf), Some(hf_dir)) => Some(LlamaEnv { bin, gguf, hf_dir }),
        _ => {
            eprintln!("skipped: set CURES_LLAMA_SERVER, CURES_SMOLLM2_GGUF, CURES_SMOLLM2_DIR (scripts/test.sh does)");
            None
        }
    }
}

/// Start llama-server on `port` with `slots` parallel slots.
pub fn start_llama(env: &LlamaEnv, port: u16, slots: usize, log: &Path) -> ServerProc {
    let mut cmd = Command::new(&env.bin);
    cmd.args(["-m"])
        .arg(&env.gguf)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-np", &slots.to_string(), "-c", &(1024 * slots).to_string()])
        // --no-repack: the AMX repacked kernels fault in this sandbox (ldtilecfg → SIGSEGV).
        .args(["-t", "1", "--no-warmup", "--no-repack"]);
    ServerProc::start(cmd, port, log, Duration::from_secs(60))
}

/// What a scripted reply looks like.
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Before the headers.
    pub delay: Duration,
    /// Nonzero: the body is sent in pieces (split after each blank line, as server-sent
    /// events are) with this pause between them.
    pub drip: Duration,
}

impl Reply {
    pub fn json(v: serde_json::Value) -> Reply {
        Reply {
            status: 200,
            body: v.to_string(),
            delay: Duration::ZERO,
            drip: Duration::ZERO,
        }
    }

    /// A non-success reply.
    pub fn error(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            ..Reply::json(serde_json::Value::Null)
        }
    }

    /// `v`'s choices as a server-sent event stream, one event per choice and token, ending
    /// with `data: [DONE]` (unless `done` is false: a cut stream).
    pub fn sse(v: &serde_json::Value, drip: Duration, done: bool) -> Reply {
        let mut body = String::new();
        for c in v["choices"].as_array().into_iter().flatten() {
            let ids = c["token_ids"].as_array().cloned().unwrap_or_default();
            for (t, id) in ids.iter().enumerate() {
                let last = t + 1 == ids.len();
                let ev = serde_json::json!({"choices": [{
                    "index": c["index"], "text": "x", "token_ids": [id],
                    "logprobs": {"token_logprobs": [c["logprobs"]["token_logprobs"][t]]},
                    "finish_reason": if last { c["finish_reason"].clone() } else { serde_json::Value::Null },
                }]});
                body.push_str(&format!("data: {ev}\n\n"));
            }
        }
        if done {
            body.push_str("data: [DONE]\n\n");
        }
        Reply {
            status: 200,
            body,
            delay: Duration::ZERO,
            drip,
        }
    }
}

type Handler = dyn Fn(&str, &str, &serde_json::Value, usize) -> Reply + Send + Sync;

/// A tiny loopback HTTP/1.1 server: `GET /health` answers 200; every other request goes to
/// the handler (method, path, JSON body, how many POSTs came before). Stopped on drop.
pub struct FakeServer {
    pub port: u16,
    pub posts: Arc<AtomicUsize>,
    /// The status `GET /health` answers (200 unless a test changes it).
    pub health: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeServer {
    pub fn start(handler: Box<Handler>) -> FakeServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let posts = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicUsize::new(200));
        let handler: Arc<Handler> = Arc::from(handler);
        let (st, ps, hs) = (stop.clone(), posts.clone(), health.clone());
        let thread = thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let h = handler.clone();
                let (ps, hs) = (ps.clone(), hs.clone());
                thread::spawn(move || serve_conn(conn, &*h, &ps, &hs));
            }
        });
        FakeServer {
            port,
            posts,
            health,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_conn(conn: TcpStream, h: &Handler, posts: &AtomicUsize, health: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let reply = if method == "GET" && path == "/health" {
            match health.load(Ordering::SeqCst) {
                200 => Reply::json(serde_json::json!({"status": "ok"})),
                s => Reply::error(s as u16, "unhealthy"),
            }
        } else if method == "GET" && path == "/v1/models" {
            Reply::json(serde_json::json!({"data": [{"id": "fake"}]}))
        } else {
            let k = if method == "POST" {
                posts.fetch_add(1, Ordering::SeqCst)
            } else {
                0
            };
            h(&method, &path, &json, k)
        };
        thread::sleep(reply.delay);
        let head = format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.status,
            reply.body.len(),
        );
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        if reply.drip.is_zero() {
            if w.write_all(reply.body.as_bytes()).is_err() {
                return;
            }
        } else {
            for piece in reply.body.split_inclusive("\n\n") {
                thread::sleep(reply.drip);
                if w.write_all(piece.as_bytes())
                    .and_then(|()| w.flush())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// A valid `/v1/completions` reply with `k` choices of `tokens` each (ids 100.., log-prob −0.5).
pub fn completion_reply(k: usize, tokens: usize, version: Option<u64>) -> serde_json::Value {
    let choices: Vec<serde_json::Value> = (0..k)
        .map(|i| {
            serde_json::json!({
                "index": i, "text": "x".repeat(tokens), "finish_reason": "length",
                "token_ids": (0..tokens).map(|t| 100 + t as i64).collect::<Vec<_>>(),
                "logprobs": {"token_logprobs": vec![-0.5; tokens]},
            })
        })
        .collect();
    let mut v = serde_json::json!({"choices": choices});
    if let Some(ver) = version {
        v["weight_version"] = serde_json::json!(ver.to_string());
    }
    v
}
