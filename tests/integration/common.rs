//! What every integration test shares: a real server process per test (config in a temp
//! dir, bound to port 0, killed on drop) and the request builders.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use laser_router::api::pb;
use laser_router::api::pb::admin_client::AdminClient;
use laser_router::api::pb::feedback_request::Signal;
use laser_router::api::pb::reward_router_client::RewardRouterClient;
use tonic::transport::Channel;

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One query of a Score request.
pub fn query(
    id: impl Into<String>,
    context: Vec<f32>,
    prompt: impl Into<String>,
    responses: impl IntoIterator<Item = impl ToString>,
) -> pb::Query {
    pb::Query {
        id: id.into(),
        context,
        prompt: prompt.into(),
        responses: responses.into_iter().map(|r| r.to_string()).collect(),
        group: String::new(),
        category: String::new(),
    }
}

/// Query "q" asking "What is 2 + 2?" (the validation and production tests' query).
pub fn sum_query(
    context: Vec<f32>,
    responses: impl IntoIterator<Item = impl ToString>,
) -> pb::Query {
    query("q", context, "What is 2 + 2?", responses)
}

/// A Score request in the router's default mode, without arm estimates; set `mode` or
/// `explain` with `pb::ScoreRequest { explain: true, ..score_request(..) }`.
pub fn score_request(router: impl Into<String>, queries: Vec<pb::Query>) -> pb::ScoreRequest {
    pb::ScoreRequest {
        router: router.into(),
        queries,
        mode: 0,
        explain: false,
    }
}

/// A Feedback request for `decision_ids`.
pub fn feedback(
    router: impl Into<String>,
    decision_ids: impl IntoIterator<Item = impl ToString>,
    signal: Signal,
) -> pb::FeedbackRequest {
    pb::FeedbackRequest {
        router: router.into(),
        decision_ids: decision_ids.into_iter().map(|id| id.to_string()).collect(),
        signal: Some(signal),
        ..Default::default()
    }
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reward_models")
}

/// TOML for one fixture reward model.
pub fn reward_model_toml(name: &str) -> String {
    let dir = fixtures_dir();
    let tokenizer = dir.join("tokenizer.json");
    let model = dir.join(name).join("model.onnx");
    let format = match name {
        "numeric" => {
            "input_format = \"template\"\ntemplate = \"Question: {prompt}\\nAnswer: {response}\"\noutput = \"scores\"\noutput_index = 1"
        }
        _ => "input_format = \"pair\"\noutput = \"logits\"",
    };
    format!(
        "[[reward_models]]\nname = \"{name}\"\nmodel = \"{}\"\ntokenizer = \"{}\"\nmax_length = 128\n{format}\n",
        model.display(),
        tokenizer.display()
    )
}

/// TOML for the fixture encoder `topics` (dimension 4) under `name`.
pub fn encoder_toml(name: &str) -> String {
    let dir = fixtures_dir();
    format!(
        "[[encoders]]\nname = \"{name}\"\nmodel = \"{}\"\ntokenizer = \"{}\"\nmax_length = 64\n",
        dir.join("topics").join("model.onnx").display(),
        dir.join("tokenizer.json").display()
    )
}

/// A config with the given context dimension and fixture reward models.
pub fn config(context_dim: usize, reward_models: &[&str], extra: &str) -> String {
    let mut text = format!("[routers]\ncontext_dim = {context_dim}\nseed = 7\n{extra}\n");
    for name in reward_models {
        text.push_str(&reward_model_toml(name));
    }
    text
}

pub struct Server {
    child: Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// The HTTP/JSON listener, when the config enables it.
    pub http: Option<SocketAddr>,
    _dir: tempfile::TempDir,
    stderr_path: PathBuf,
}

impl Server {
    /// A server on a fresh data directory.
    pub fn start(config_toml: &str) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        Self::start_in(dir, config_toml, &data_dir, &[]).expect("server starts")
    }

    /// A server on `data_dir` (kept across restarts), with extra `serve` arguments.
    pub fn start_on(
        config_toml: &str,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Server, String> {
        Self::start_in(
            tempfile::tempdir().expect("temp dir"),
            config_toml,
            data_dir,
            extra_args,
        )
    }

    fn start_in(
        dir: tempfile::TempDir,
        config_toml: &str,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Server, String> {
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config_toml).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_laser-router"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(if extra_args.contains(&"--listen") {
                vec!["--metrics-listen", "127.0.0.1:0"]
            } else {
                vec!["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
            })
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .env("LASER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start laser-router");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("laser-router listening ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(ready) => ready,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut log = String::new();
                let _ = std::fs::File::open(&stderr_path).map(|mut f| f.read_to_string(&mut log));
                return Err(log);
            }
        };
        let field = |key: &str| -> SocketAddr {
            let mut addr: SocketAddr = ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in ready line {ready:?}"));
            // A server bound to every interface is reached over loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            addr
        };
        let http = ready.contains(" http=").then(|| field("http="));
        Ok(Server {
            grpc: field("grpc="),
            metrics: field("metrics="),
            http,
            child,
            _dir: dir,
            stderr_path,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// SIGKILL: no shutdown, no final snapshot.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child
            .wait()
            .map(|status| status.success())
            .unwrap_or(false)
    }

    pub async fn router_client(&self) -> RewardRouterClient<Channel> {
        RewardRouterClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect RewardRouter")
    }

    pub async fn admin_client(&self) -> AdminClient<Channel> {
        AdminClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect Admin")
    }

    pub fn channel_uri(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- server stderr ---\n{}", self.stderr());
        }
    }
}

/// A plain HTTP/1.1 GET; returns the whole response (status line, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}
