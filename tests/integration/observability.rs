//! The dashboard and the alert rules work: a real Prometheus (Debian's `prometheus`
//! package; `.ci/run` installs it) scrapes a real server under traffic, then every panel
//! query of deploy/grafana/dashboards/laser-router.json and every alert expression of
//! deploy/prometheus/alerts.yml is evaluated against it.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use laser_router::api::pb::feedback_request::Signal;

use crate::common::{Server, config, feedback, http_get, query, repo, score_request};

const ROUTER: &str = "dash";

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_prometheus(target: SocketAddr) -> Prometheus {
    let binary = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".into());
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: laser-router\n    static_configs:\n      - targets: [\"{target}\"]\n",
        repo("deploy/prometheus/alerts.yml").display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let addr = free_port();
    let child = Command::new(&binary)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {binary} (apt-get install prometheus; .ci/run does): {e}")
        });
    let prometheus = Prometheus {
        child,
        addr,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err()
        || !http_get(addr, "/-/ready").starts_with("HTTP/1.1 200")
    {
        assert!(Instant::now() < deadline, "Prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    prometheus
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Evaluate `query` now: (status, number of result series).
fn prometheus_query(prometheus: &Prometheus, query: &str) -> (String, usize, String) {
    let response = http_get_retry(
        prometheus.addr,
        &format!("/api/v1/query?query={}", percent_encode(query)),
    );
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    // Chunked transfer encoding: take the JSON object between the first '{' and last '}'.
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {body}"));
    let status = value["status"].as_str().unwrap_or_default().to_string();
    let count = value["data"]["result"]
        .as_array()
        .map(|r| r.len())
        .unwrap_or(0);
    (
        status,
        count,
        value["error"].as_str().unwrap_or_default().to_string(),
    )
}

fn http_get_retry(addr: SocketAddr, path: &str) -> String {
    for _ in 0..3 {
        let response = http_get(addr, path);
        if !response.is_empty() {
            return response;
        }
    }
    panic!("no answer from {addr}{path}");
}

async fn drive_traffic(server: &Server, rounds: usize) {
    let mut client = server.router_client().await;
    for round in 0..rounds {
        let results = client
            .score(score_request(
                ROUTER,
                (0..2)
                    .map(|i| laser_router::api::pb::Query {
                        // Per-category panels read these.
                        category: ["math", "chat"][i].to_string(),
                        ..query(
                            format!("{round}-{i}"),
                            vec![1.0, i as f32, 0.5, (round % 3) as f32],
                            "How are you?",
                            ["Fine, thanks.", "I am well, thank you for asking!"],
                        )
                    })
                    .collect(),
            ))
            .await
            .expect("score")
            .into_inner()
            .results;
        for result in results {
            let request = feedback(
                ROUTER,
                vec![result.decision_id],
                Signal::Loss((round % 5) as f64 * 0.2),
            );
            client.feedback(request.clone()).await.expect("feedback");
            if round % 4 == 0 {
                client.feedback(request).await.expect("duplicate feedback");
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

fn panel_queries() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo("deploy/grafana/dashboards/laser-router.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            queries.push((title, target["expr"].as_str().expect("expr").to_string()));
        }
    }
    queries
}

fn alert_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts YAML");
    let mut expressions = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            expressions.push((
                rule["alert"].as_str().expect("alert name").to_string(),
                rule["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    expressions
}

/// Metric names an expression reads (`laser_*`, `process_*`, `up`).
fn metric_names(expression: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expression.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &expression[start..i];
            if word.starts_with("laser_") || word.starts_with("process_") || word == "up" {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test]
async fn every_dashboard_panel_and_alert_expression_works_against_a_real_prometheus() {
    let server = Server::start(&config(4, &["length", "polite"], ""));
    drive_traffic(&server, 10).await;
    let prometheus = start_prometheus(server.metrics);
    // Several scrapes while traffic flows, so rates have at least two samples (Prometheus
    // starts scraping a few seconds after it is ready).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        drive_traffic(&server, 10).await;
        let (_, series, _) = prometheus_query(
            &prometheus,
            "count_over_time(laser_grpc_requests_total{method=\"Score\"}[1m]) >= 4",
        );
        if series > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not collect 4 scrapes in 60 s"
        );
    }
    let (status, up, _) = prometheus_query(&prometheus, "up{job=\"laser-router\"} == 1");
    assert_eq!(
        (status.as_str(), up),
        ("success", 1),
        "Prometheus scrapes the server"
    );

    let mut failures = Vec::new();
    for (title, expression) in panel_queries() {
        let concrete = expression
            .replace("$router", ROUTER)
            .replace("$__rate_interval", "30s");
        let (status, series, error) = prometheus_query(&prometheus, &concrete);
        if status != "success" || series == 0 {
            failures.push(format!(
                "panel {title:?}: {concrete} -> {status} {series} series {error}"
            ));
        }
    }
    for (alert, expression) in alert_expressions() {
        let (status, _, error) = prometheus_query(&prometheus, &expression);
        if status != "success" {
            failures.push(format!("alert {alert}: {expression} -> {status} {error}"));
        }
        // Not firing is fine; what each alert reads must exist.
        for name in metric_names(&expression) {
            let (status, series, error) = prometheus_query(&prometheus, &format!("count({name})"));
            if status != "success" || series == 0 {
                failures.push(format!("alert {alert}: metric {name} has no data {error}"));
            }
        }
    }
    // Prometheus loaded the rules file itself.
    let rules = http_get(prometheus.addr, "/api/v1/rules");
    for (alert, _) in alert_expressions() {
        if !rules.contains(&format!("\"name\":\"{alert}\"")) {
            failures.push(format!("alert {alert} not loaded by Prometheus"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
