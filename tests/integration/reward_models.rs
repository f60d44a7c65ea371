//! Scores through the server equal ONNX Runtime run directly on the same files, and each
//! fixture RM prefers its known property.

use std::path::PathBuf;
use std::sync::OnceLock;

use laser_router::api::pb;
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;
use tokenizers::Tokenizer;

use crate::common::{Server, config, fixtures_dir, query, score_request};

/// Absolute tolerance between server and direct scores. The fixture graphs count tokens
/// in float32, so both sides should agree exactly; padding in the server's batches is the
/// only difference, and it must not change any score.
const TOLERANCE: f32 = 1e-5;

fn environment() -> &'static Environment {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ort/lib/libonnxruntime.so")
            });
        ort::init_from(path)
            .expect("load ONNX Runtime")
            .with_name("direct")
            .build()
            .expect("ONNX Runtime environment")
    })
}

/// The fixture tokenizer (no padding or truncation) and a plain session on `name`'s model.
fn direct_model(dir: &std::path::Path, name: &str) -> (Tokenizer, Session) {
    let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).expect("no truncation");
    let session = Session::builder(environment())
        .expect("builder")
        .commit_from_file(dir.join(name).join("model.onnx"))
        .expect("session");
    (tokenizer, session)
}

/// Run the fixture model directly, one response at a time (no batching, no padding).
fn direct_scores(name: &str, prompt: &str, responses: &[&str]) -> Vec<f32> {
    let dir = fixtures_dir();
    let (tokenizer, mut session) = direct_model(&dir, name);
    let input_names: Vec<String> = session
        .inputs()
        .iter()
        .map(|i| i.name().to_string())
        .collect();
    responses
        .iter()
        .map(|response| {
            let encoding = if name == "numeric" {
                tokenizer.encode(format!("Question: {prompt}\nAnswer: {response}"), true)
            } else {
                tokenizer.encode((prompt, *response), true)
            }
            .expect("encode");
            let len = encoding.len() as i64;
            let column = |values: &[u32]| -> SessionInputValue<'static> {
                let values: Vec<i64> = values.iter().map(|&v| v as i64).collect();
                Tensor::from_array(([1i64, len], values))
                    .expect("tensor")
                    .into()
            };
            let feed: Vec<(String, SessionInputValue<'static>)> = input_names
                .iter()
                .map(|input| {
                    let value = match input.as_str() {
                        "input_ids" => column(encoding.get_ids()),
                        "attention_mask" => column(encoding.get_attention_mask()),
                        "token_type_ids" => column(encoding.get_type_ids()),
                        other => panic!("unexpected input {other}"),
                    };
                    (input.clone(), value)
                })
                .collect();
            let outputs = session.run(feed).expect("run");
            let (_, data) = outputs[0].try_extract_tensor::<f32>().expect("f32 output");
            if name == "numeric" { data[1] } else { data[0] }
        })
        .collect()
}

#[tokio::test]
async fn server_scores_equal_direct_onnx_runtime_and_each_rm_prefers_its_property() {
    let prompt = "How many apples does Sam have if he buys 3 more?";
    let responses = [
        "Sam has 7 apples now, 4 plus 3.",
        "Thank you for asking, I am glad to help: please count them again.",
        "He has some more apples than before because he went to the market and bought a few.",
        "No.",
    ];
    // (reward model, index of the response it must rank first)
    let expected_best = [("numeric", 0), ("polite", 1), ("length", 2)];
    for (name, best) in expected_best {
        let server = Server::start(&config(4, &[name], ""));
        let mut client = server.router_client().await;
        let result = client
            .score(pb::ScoreRequest {
                explain: true,
                ..score_request("check", vec![query("q", vec![0.5; 4], prompt, responses)])
            })
            .await
            .expect("score")
            .into_inner()
            .results
            .remove(0);
        assert_eq!(result.reward_model, name);
        assert_eq!(result.arms.len(), 1);
        let direct = direct_scores(name, prompt, &responses);
        assert_eq!(result.scores.len(), direct.len());
        for (served, direct) in result.scores.iter().zip(&direct) {
            assert!(
                (served - direct).abs() <= TOLERANCE,
                "{name}: server {:?} vs direct {:?}",
                result.scores,
                direct
            );
        }
        assert_eq!(
            result.ranking[0], best,
            "{name} ranked {:?} (scores {:?})",
            result.ranking, result.scores
        );
    }
}

#[tokio::test]
async fn list_reward_models_shows_specs_and_discovered_inputs() {
    let server = Server::start(&config(4, &["length", "numeric"], ""));
    let mut admin = server.admin_client().await;
    let models = admin
        .list_reward_models(pb::ListRewardModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .reward_models;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["length", "numeric"]);
    let length = &models[0];
    assert_eq!(
        length.input_names,
        ["input_ids", "attention_mask", "token_type_ids"]
    );
    assert_eq!(
        (length.output_name.as_str(), length.input_format.as_str()),
        ("logits", "pair")
    );
    let numeric = &models[1];
    assert_eq!(numeric.input_names, ["input_ids", "attention_mask"]);
    assert_eq!(
        (numeric.output_name.as_str(), numeric.output_index),
        ("scores", 1)
    );
    assert_eq!(numeric.provider, "cpu");
}

#[test]
fn a_wrong_output_name_fails_startup_with_the_models_outputs() {
    let toml = config(4, &["length"], "").replace("output = \"logits\"", "output = \"score\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_laser-router"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"score\"") && stderr.contains("[\"logits\"]"),
        "{stderr}"
    );
}

fn numeric_variant(name: &str, extra: &str) -> String {
    let dir = fixtures_dir();
    format!(
        "[[reward_models]]\nname = \"{name}\"\nmodel = \"{}\"\ntokenizer = \"{}\"\ninput_format = \"template\"\ntemplate = \"Question: {{prompt}}\\nAnswer: {{response}}\"\noutput = \"scores\"\noutput_index = 1\n{extra}\n",
        dir.join("numeric/model.onnx").display(),
        dir.join("tokenizer.json").display()
    )
}

async fn fixed_scores(server: &Server, reward_model: &str, responses: &[&str]) -> Vec<f32> {
    fixed_scores_with_prompt(server, reward_model, "How much?", responses).await
}

#[tokio::test]
async fn scores_can_be_read_as_index_difference_or_softmax() {
    let mut toml = "[routers]\ncontext_dim = 4\n".to_string();
    toml.push_str(&numeric_variant("index", ""));
    toml.push_str(&numeric_variant(
        "difference",
        "score = \"difference\"\noutput_other_index = 0",
    ));
    toml.push_str(&numeric_variant("softmax", "score = \"softmax\""));
    let server = Server::start(&toml);
    let responses = ["No.", "7 and 8", "1 2 3"];
    let index = fixed_scores(&server, "index", &responses).await;
    let difference = fixed_scores(&server, "difference", &responses).await;
    let softmax = fixed_scores(&server, "softmax", &responses).await;
    for i in 0..responses.len() {
        // The fixture's output is [-n, n].
        assert!(
            (difference[i] - 2.0 * index[i]).abs() < 1e-5,
            "{difference:?} vs {index:?}"
        );
        let expected = 1.0 / (1.0 + (-2.0 * index[i]).exp());
        assert!(
            (softmax[i] - expected).abs() < 1e-5,
            "{softmax:?} vs {expected}"
        );
    }
}

#[tokio::test]
async fn concurrent_requests_share_inferences() {
    let mut toml = config(4, &["length"], "");
    toml = toml.replace(
        "max_length = 128",
        "max_length = 128\nmax_batch_delay_ms = 20",
    );
    let server = Server::start(&toml);
    let channel = tonic::transport::Endpoint::from_shared(server.channel_uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let mut client = pb::reward_router_client::RewardRouterClient::new(channel.clone());
            tokio::spawn(async move {
                client
                    .score(score_request(
                        "batched",
                        vec![query(
                            format!("q{i}"),
                            vec![1.0; 4],
                            "Say something",
                            vec![
                                "short".to_string(),
                                format!("a somewhat longer answer number {i}"),
                            ],
                        )],
                    ))
                    .await
                    .expect("score")
                    .into_inner()
                    .results
                    .remove(0)
            })
        })
        .collect();
    for task in tasks {
        let result = task.await.unwrap();
        // The length RM: 0.1 per response token, whatever batch it shared.
        assert!(result.scores[1] > result.scores[0], "{:?}", result.scores);
    }
    let metrics = crate::common::http_get(server.metrics, "/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{reward_model=\"length\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    let (sequences, inferences) = (
        value("laser_rm_batch_size_sum"),
        value("laser_rm_batch_size_count"),
    );
    // 16 requests × 2 responses (+1 probe): batching needs fewer inferences than requests.
    assert_eq!(sequences, 33.0);
    assert!(inferences < 16.0, "{inferences} inferences for 16 requests");
}

#[tokio::test]
async fn an_unavailable_provider_fails_with_onnx_runtimes_reason_or_falls_back() {
    let server = Server::start(&config(4, &["length"], ""));
    let mut admin = server.admin_client().await;
    let spec = |name: &str, fallback: bool| pb::RewardModelSpec {
        name: name.into(),
        model_path: fixtures_dir()
            .join("polite/model.onnx")
            .display()
            .to_string(),
        tokenizer_path: fixtures_dir().join("tokenizer.json").display().to_string(),
        input_format: "pair".into(),
        provider: "cuda".into(),
        fallback_to_cpu: fallback,
        ..Default::default()
    };
    let status = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(spec("gpu", false)),
        })
        .await
        .expect_err("the CPU build of ONNX Runtime has no CUDA provider");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("cuda:0") && status.message().to_lowercase().contains("cuda"),
        "{}",
        status.message()
    );
    let added = admin
        .add_reward_model(pb::AddRewardModelRequest {
            spec: Some(spec("gpu-or-cpu", true)),
        })
        .await
        .expect("falls back to CPU")
        .into_inner()
        .reward_model
        .unwrap();
    assert_eq!(added.provider, "cpu (fallback from cuda:0)");
}

#[tokio::test]
async fn the_ensemble_uses_each_rms_own_score_normalization() {
    let mut toml = config(4, &["length", "polite"], "");
    toml = toml.replacen(
        "output = \"logits\"",
        "output = \"logits\"\nscore_normalization = { affine = { scale = 10.0, shift = 1.0 } }",
        1,
    );
    toml = toml.replacen(
        "name = \"polite\"",
        "name = \"polite\"\nscore_normalization = \"running\"",
        1,
    );
    let server = Server::start(&toml);
    let responses = [
        "Thanks, please and thank you!",
        "no",
        "Sorry, I am glad to help.",
    ];
    let length = fixed_scores(&server, "length", &responses).await;
    let polite = fixed_scores(&server, "polite", &responses).await;
    let mut admin = server.admin_client().await;
    admin
        .create_router(pb::CreateRouterRequest {
            name: "ensemble".into(),
            settings: Some(pb::RouterSettings {
                context_dim: 4,
                policy: pb::Policy::Ensemble as i32,
                ..Default::default()
            }),
        })
        .await
        .expect("create");
    let combined = server
        .router_client()
        .await
        .score(score_request(
            "ensemble",
            vec![query("q", vec![1.0; 4], "How much?", responses)],
        ))
        .await
        .expect("score")
        .into_inner()
        .results
        .remove(0)
        .scores;
    // polite's running statistics: its scores observed twice (fixed router, ensemble).
    let observed: Vec<f64> = polite.iter().chain(&polite).map(|&s| s as f64).collect();
    let mean = observed.iter().sum::<f64>() / observed.len() as f64;
    let std = (observed.iter().map(|s| (s - mean).powi(2)).sum::<f64>()
        / (observed.len() - 1) as f64)
        .sqrt();
    for i in 0..responses.len() {
        let expected = ((10.0 * length[i] as f64 + 1.0) + (polite[i] as f64 - mean) / std) / 2.0;
        assert!(
            (combined[i] as f64 - expected).abs() < 1e-4,
            "{combined:?} vs {expected} at {i}"
        );
    }
}

/// Direct ONNX Runtime on given texts, tokenized without special tokens (as a chat template
/// writes its own), one at a time.
fn direct_text_scores(name: &str, texts: &[String]) -> Vec<f32> {
    let dir = fixtures_dir();
    let (tokenizer, mut session) = direct_model(&dir, name);
    texts
        .iter()
        .map(|text| {
            let encoding = tokenizer.encode(text.as_str(), false).expect("encode");
            let len = encoding.len() as i64;
            let ids: Vec<i64> = encoding.get_ids().iter().map(|&v| v as i64).collect();
            let mask: Vec<i64> = encoding
                .get_attention_mask()
                .iter()
                .map(|&v| v as i64)
                .collect();
            let feed: Vec<(String, SessionInputValue<'static>)> = vec![
                (
                    "input_ids".into(),
                    Tensor::from_array(([1i64, len], ids)).unwrap().into(),
                ),
                (
                    "attention_mask".into(),
                    Tensor::from_array(([1i64, len], mask)).unwrap().into(),
                ),
            ];
            let outputs = session.run(feed).expect("run");
            let (_, data) = outputs[0].try_extract_tensor::<f32>().expect("f32 output");
            data[1]
        })
        .collect()
}

#[tokio::test]
async fn chat_template_rms_score_the_rendered_conversation() {
    let dir = fixtures_dir();
    let toml = format!(
        "[routers]\ncontext_dim = 4\n[[reward_models]]\nname = \"chat\"\nmodel = \"{}\"\ntokenizer = \"{}\"\ninput_format = \"chat\"\noutput = \"scores\"\noutput_index = 1\n",
        dir.join("numeric/model.onnx").display(),
        dir.join("tokenizer.json").display()
    );
    let server = Server::start(&toml);
    let prompt = "  What is 6 times 7? ";
    let responses = ["42", "forty two", "6 * 7 = 42"];
    let served = fixed_scores_with_prompt(&server, "chat", prompt, &responses).await;
    let rendered: Vec<String> = responses
        .iter()
        .map(|r| {
            format!(
                "[CLS]<|user|> {} [SEP]<|assistant|> {} [SEP]",
                prompt.trim(),
                r
            )
        })
        .collect();
    let direct = direct_text_scores("numeric", &rendered);
    assert_eq!(served.len(), direct.len());
    for (s, d) in served.iter().zip(&direct) {
        assert!((s - d).abs() <= TOLERANCE, "{served:?} vs {direct:?}");
    }
    assert!(served[2] > served[1], "{served:?}");
}

async fn fixed_scores_with_prompt(
    server: &Server,
    reward_model: &str,
    prompt: &str,
    responses: &[&str],
) -> Vec<f32> {
    let mut admin = server.admin_client().await;
    let router = format!("fixed-{reward_model}");
    admin
        .create_router(pb::CreateRouterRequest {
            name: router.clone(),
            settings: Some(pb::RouterSettings {
                context_dim: 4,
                policy: pb::Policy::Fixed as i32,
                fixed_reward_model: reward_model.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("create");
    server
        .router_client()
        .await
        .score(score_request(
            router,
            vec![query("q", vec![1.0; 4], prompt, responses)],
        ))
        .await
        .expect("score")
        .into_inner()
        .results
        .remove(0)
        .scores
}
