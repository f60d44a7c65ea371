//! Routers that take their contexts from the prompt: an encoder the server hosts (the
//! `topics` fixture, dimension 4), created on first use by a Score without contexts,
//! learning from those contexts, hot-added and removed durably, and every way a request can
//! get the context source wrong.

use laser_router::api::pb;
use laser_router::api::pb::feedback_request::Signal;
use tonic::Code;

use crate::common::{Server, config, encoder_toml, feedback, fixtures_dir, query, score_request};

/// Three RMs, the `topics` encoder, and routers created on first use with it.
fn encoder_config() -> String {
    let mut text = config(
        4,
        &["length", "polite", "numeric"],
        "default_encoder = \"topics\"\nnormalization = \"none\"",
    );
    text.push_str(&encoder_toml("topics"));
    text
}

fn prompt_query(id: String, prompt: &str) -> pb::Query {
    query(id, Vec::new(), prompt, ["Three, thank you.", "3", "None."])
}

#[tokio::test]
async fn a_score_without_contexts_creates_an_encoder_router_that_learns_from_prompts() {
    let server = Server::start(&encoder_config());
    let mut client = server.router_client().await;
    // Numbers questions want `numeric`; polite requests want `polite`.
    let prompts = ["What is 12 plus 30?", "Please kindly say thanks."];
    let right = ["numeric", "polite"];
    let mut correct = [0usize; 2];
    for round in 0..120 {
        let queries = (0..2)
            .map(|topic| prompt_query(format!("{round}-{topic}"), prompts[topic]))
            .collect();
        let results = client
            .score(score_request("from-prompts", queries))
            .await
            .expect("score without contexts")
            .into_inner()
            .results;
        for (topic, result) in results.iter().enumerate() {
            let hit = result.reward_model == right[topic];
            if round >= 80 && hit {
                correct[topic] += 1;
            }
            client
                .feedback(feedback(
                    "from-prompts",
                    [result.decision_id.as_str()],
                    Signal::Reward(if hit { 1.0 } else { 0.0 }),
                ))
                .await
                .expect("feedback");
        }
    }
    assert!(
        correct.iter().all(|&c| c >= 32),
        "the last 40 rounds routed {correct:?} of 40 per topic right"
    );
    let info = server
        .admin_client()
        .await
        .get_router(pb::GetRouterRequest {
            name: "from-prompts".into(),
        })
        .await
        .expect("router")
        .into_inner()
        .router
        .expect("info");
    let settings = info.settings.expect("settings");
    assert_eq!(
        (settings.encoder.as_str(), settings.context_dim),
        ("topics", 4)
    );
}

#[tokio::test]
async fn contexts_that_do_not_fit_the_router_are_refused_and_change_nothing() {
    let server = Server::start(&encoder_config());
    let mut client = server.router_client().await;
    let mut admin = server.admin_client().await;
    client
        .score(score_request(
            "enc",
            vec![prompt_query("a".into(), "What?")],
        ))
        .await
        .expect("creates the encoder router");
    client
        .score(score_request(
            "plain",
            vec![query("a", vec![1.0; 4], "What?", ["x"])],
        ))
        .await
        .expect("creates a router for client contexts");
    let routers_before = admin
        .list_routers(pb::ListRoutersRequest {})
        .await
        .unwrap()
        .into_inner();
    let refusals = [
        // Contexts for a router that embeds the prompt.
        (
            "enc",
            vec![query("a", vec![1.0; 4], "What?", ["x"])],
            "queries[0].context",
        ),
        // No contexts for a router that takes the client's.
        (
            "plain",
            vec![prompt_query("a".into(), "What?")],
            "queries[0].context",
        ),
        // Nothing to embed.
        (
            "enc",
            vec![prompt_query("a".into(), "")],
            "queries[0].prompt",
        ),
        // Mixed.
        (
            "enc",
            vec![
                prompt_query("a".into(), "What?"),
                query("b", vec![1.0; 4], "Why?", ["x"]),
            ],
            "queries[1].context",
        ),
    ];
    for (router, queries, field) in refusals {
        let status = client
            .score(score_request(router, queries))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    let routers_after = admin
        .list_routers(pb::ListRoutersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(routers_before, routers_after);

    // CreateRouter: the encoder's dimension, or a refusal naming the field.
    let create = |name: &str, encoder: &str, context_dim: u32| pb::CreateRouterRequest {
        name: name.into(),
        settings: Some(pb::RouterSettings {
            encoder: encoder.into(),
            context_dim,
            ..Default::default()
        }),
    };
    let created = admin
        .create_router(create("explicit", "topics", 0))
        .await
        .expect("create with the encoder")
        .into_inner()
        .router
        .unwrap();
    assert_eq!(created.settings.unwrap().context_dim, 4);
    for (request, field) in [
        (create("wrong-dim", "topics", 8), "settings.context_dim"),
        (create("no-encoder", "nope", 0), "settings.encoder"),
    ] {
        let status = admin.create_router(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
}

#[tokio::test]
async fn without_a_default_encoder_a_score_without_contexts_needs_an_existing_router() {
    let server = Server::start(&config(4, &["length"], ""));
    let status = server
        .router_client()
        .await
        .score(score_request(
            "new",
            vec![prompt_query("a".into(), "What?")],
        ))
        .await
        .expect_err("no encoder to create it with");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("routers.default_encoder"),
        "{}",
        status.message()
    );
    let routers = server
        .admin_client()
        .await
        .list_routers(pb::ListRoutersRequest {})
        .await
        .unwrap()
        .into_inner()
        .routers;
    assert!(routers.is_empty());
}

#[tokio::test]
async fn encoders_are_added_and_removed_durably_and_not_while_a_router_uses_one() {
    let data = tempfile::tempdir().unwrap();
    let config = encoder_config();
    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    let mut admin = server.admin_client().await;
    let dir = fixtures_dir();
    let spec = |name: &str, model: &str| pb::EncoderSpec {
        name: name.into(),
        model_path: dir.join(model).join("model.onnx").display().to_string(),
        tokenizer_path: dir.join("tokenizer.json").display().to_string(),
        ..Default::default()
    };
    let added = admin
        .add_encoder(pb::AddEncoderRequest {
            spec: Some(spec("topics-2", "topics")),
        })
        .await
        .expect("add")
        .into_inner()
        .encoder
        .unwrap();
    assert_eq!((added.dim, added.source.as_str()), (4, "admin"));
    // A model whose output is not a sequence of vectors fails its probe; nothing changes.
    let status = admin
        .add_encoder(pb::AddEncoderRequest {
            spec: Some(spec("bad", "length")),
        })
        .await
        .expect_err("a reward model is not an encoder");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("pooling"), "{}", status.message());
    admin
        .create_router(pb::CreateRouterRequest {
            name: "uses-2".into(),
            settings: Some(pb::RouterSettings {
                encoder: "topics-2".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("router on the added encoder");
    let status = admin
        .remove_encoder(pb::RemoveEncoderRequest {
            name: "topics-2".into(),
        })
        .await
        .expect_err("in use");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("uses-2"), "{}", status.message());
    admin
        .remove_encoder(pb::RemoveEncoderRequest {
            name: "topics".into(),
        })
        .await
        .expect("the config's encoder is unused");
    server.kill();

    let server = Server::start_on(&config, data.path(), &[]).unwrap();
    let names: Vec<(String, String)> = server
        .admin_client()
        .await
        .list_encoders(pb::ListEncodersRequest {})
        .await
        .unwrap()
        .into_inner()
        .encoders
        .into_iter()
        .map(|e| (e.name, e.source))
        .collect();
    assert_eq!(names, vec![("topics-2".to_string(), "admin".to_string())]);
    let results = server
        .router_client()
        .await
        .score(score_request(
            "uses-2",
            vec![prompt_query("a".into(), "What is 2?")],
        ))
        .await
        .expect("the router still embeds with its encoder")
        .into_inner()
        .results;
    assert_eq!(results.len(), 1);
}
