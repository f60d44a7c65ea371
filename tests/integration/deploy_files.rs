//! Static checks of what docker-compose, the Dockerfiles, Kubernetes and Grafana are given
//! (no Docker engine runs here): they parse, every path they copy or mount exists, and the
//! names that tie them together agree.

use std::path::Path;

use serde_yaml::Value;

use crate::common::repo;

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

#[test]
fn compose_files_name_existing_dockerfiles_and_mounts() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["laser-router", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            let context = build["context"].as_str().expect("build.context");
            let dockerfile = build["dockerfile"].as_str().expect("build.dockerfile");
            assert!(
                repo(context).join(dockerfile).is_file(),
                "{name:?}: {dockerfile} missing"
            );
        }
        for volume in service
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let volume = volume.as_str().expect("short volume syntax");
            if let Some(source) = volume.split(':').next().filter(|s| s.starts_with("./")) {
                assert!(
                    repo(source).exists(),
                    "{name:?}: mount source {source} missing"
                );
            }
        }
    }
    let grafana_env = &services[&Value::from("grafana")]["environment"];
    let home = grafana_env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    assert!(
        home.ends_with("laser-router.json")
            && repo("deploy/grafana/dashboards/laser-router.json").is_file()
    );

    let gpu = yaml("docker-compose.gpu.yml");
    let build = &gpu["services"]["laser-router"]["build"];
    assert!(
        repo(build["context"].as_str().unwrap())
            .join(build["dockerfile"].as_str().unwrap())
            .is_file()
    );
    let devices =
        &gpu["services"]["laser-router"]["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(devices["driver"].as_str(), Some("nvidia"));
}

#[test]
fn dockerfiles_copy_only_what_exists_and_run_as_non_root_with_a_healthcheck() {
    // Every workspace crate must reach the build stage.
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo("Cargo.toml")).unwrap()).unwrap();
    let members: Vec<String> = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .map(|member| member.as_str().unwrap().to_string())
        .collect();
    for dockerfile in ["deploy/Dockerfile", "deploy/Dockerfile.cuda"] {
        let text = std::fs::read_to_string(repo(dockerfile)).unwrap();
        for member in &members {
            let top = member.split('/').next().unwrap();
            assert!(
                text.lines()
                    .any(|line| line.trim() == format!("COPY {top} {top}")),
                "{dockerfile}: the workspace crate {member} is not copied into the build"
            );
        }
        let mut stages = 0;
        for line in text.lines().map(str::trim) {
            if line.starts_with("FROM ") {
                stages += 1;
            }
            let Some(rest) = line.strip_prefix("COPY ") else {
                continue;
            };
            if rest.starts_with("--from=") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for source in &parts[..parts.len() - 1] {
                assert!(
                    repo(source).exists(),
                    "{dockerfile}: COPY source {source} missing"
                );
            }
        }
        assert!(stages >= 2, "{dockerfile}: multi-stage");
        assert!(text.contains("\nUSER laser"), "{dockerfile}: non-root user");
        assert!(
            text.contains("HEALTHCHECK") && text.contains("\"laser-router\", \"health\""),
            "{dockerfile}: healthcheck"
        );
        assert!(
            text.contains("fetch-onnxruntime.sh") || text.contains("onnxruntime-gpu==1.31.1"),
            "{dockerfile}: ONNX Runtime"
        );
    }
    // The healthcheck's command exists.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_laser-router"))
        .args(["health", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
}

#[test]
fn kubernetes_manifests_agree_on_names_and_ports() {
    let deployment = yaml("deploy/k8s/deployment.yaml");
    let service = yaml("deploy/k8s/service.yaml");
    let configmap = yaml("deploy/k8s/configmap.yaml");
    let pvc = yaml_documents("deploy/k8s/pvc.yaml").remove(0);
    assert_eq!(deployment["kind"].as_str(), Some("Deployment"));
    assert_eq!(
        deployment["spec"]["strategy"]["type"].as_str(),
        Some("Recreate"),
        "one writer per state dir"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_sequence().unwrap();
    let claim = volumes
        .iter()
        .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .unwrap();
    assert_eq!(Some(claim), pvc["metadata"]["name"].as_str());
    assert_mounts_configmap(volumes, &configmap);
    let container = &pod["containers"][0];
    assert!(container["readinessProbe"]["grpc"]["port"].as_i64() == Some(50051));
    let port_names: Vec<&str> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for port in service["spec"]["ports"].as_sequence().unwrap() {
        let target = port["targetPort"].as_str().unwrap();
        assert!(
            port_names.contains(&target),
            "service targets unknown port {target}"
        );
    }
    // The ConfigMap's config is a valid laser-router config, with its remote RM example
    // uncommented too.
    let toml = configmap["data"]["config.toml"].as_str().unwrap();
    laser_router::config::Config::parse(toml, "configmap", Path::new("/")).expect("valid config");
    let (before, rest) = toml
        .split_once("# BEGIN remote reward model example\n")
        .unwrap();
    let (example, after) = rest
        .split_once("# END remote reward model example")
        .unwrap();
    let uncommented: String = example
        .lines()
        .map(|line| line.trim_start().trim_start_matches("# ").to_string() + "\n")
        .collect();
    let config = laser_router::config::Config::parse(
        &format!("{before}{uncommented}{after}"),
        "configmap example",
        Path::new("/"),
    )
    .expect("valid remote RM example");
    let remote = config
        .reward_models
        .iter()
        .find(|spec| spec.name == "skywork")
        .expect("the example RM");
    remote.validate().expect("a valid kserve_v2 spec");
    assert_eq!(remote.remote().unwrap().model_name, "skywork-rm");
}

/// The config file a compose service's `serve --config /app/...` names: its path in the
/// repository (the image copies deploy/config) and its text.
/// The pod's volumes mount the ConfigMap `configmap` defines.
fn assert_mounts_configmap(volumes: &[Value], configmap: &Value) {
    let config = volumes
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("a configMap volume");
    assert_eq!(Some(config), configmap["metadata"]["name"].as_str());
}

fn config_in_image(service: &Value) -> (String, String) {
    let command: Vec<&str> = service["command"]
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let path = command[command.iter().position(|a| *a == "--config").unwrap() + 1];
    let local = path.strip_prefix("/app/").expect("a path in the image");
    let text = std::fs::read_to_string(repo(local)).unwrap_or_else(|e| panic!("{local}: {e}"));
    (local.to_string(), text)
}

/// The engines example: the override names the config the image holds, the config is valid
/// and its remote RM points at the Triton service, whose model repository mounts exist.
#[test]
fn the_engines_compose_example_wires_triton_to_a_kserve_v2_reward_model() {
    let compose = yaml("docker-compose.engines.yml");
    let services = &compose["services"];
    let (local, text) = config_in_image(&services["laser-router"]);
    let config =
        laser_router::config::Config::parse(&text, &local, &repo("deploy/config")).expect("valid");
    let remote = config
        .reward_models
        .iter()
        .find_map(|spec| spec.remote().map(|remote| (spec, remote)))
        .expect("a kserve_v2 RM");
    remote.0.validate().expect("valid spec");
    assert!(
        remote.0.tokenizer.is_file(),
        "the remote RM's tokenizer ships in the image"
    );
    assert_eq!(remote.1.endpoints, ["http://triton:8001"]);
    let mounts: Vec<&str> = services["triton"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for mount in &mounts {
        let source = mount.split(':').next().unwrap();
        assert!(repo(source).exists(), "mount source {source} missing");
    }
    let model_dir = format!("/models/{}/", remote.1.model_name);
    assert!(
        mounts
            .iter()
            .any(|m| m.contains(&format!("{model_dir}config.pbtxt")))
    );
    assert!(
        mounts
            .iter()
            .any(|m| m.contains(&format!("{model_dir}1/model.onnx")))
    );
    let pbtxt = std::fs::read_to_string(repo("deploy/triton/models/numeric/config.pbtxt")).unwrap();
    assert!(pbtxt.contains(&format!("name: \"{}\"", remote.1.model_name)));
    assert!(pbtxt.contains(&format!(
        "name: \"{}\"",
        remote.0.output.as_deref().unwrap()
    )));
}

#[test]
fn grafana_provisioning_points_at_the_dashboard_and_datasource() {
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/dashboards/laser-router.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            Some(uid),
            "{}",
            panel["title"]
        );
    }
    assert_eq!(
        dashboard["templating"]["list"][0]["name"].as_str(),
        Some("router")
    );
    let provider = yaml("deploy/grafana/provisioning/dashboards/laser-router.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
    let rules = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("deploy/prometheus/alerts.yml"))
        .output()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );
}

/// A config file of the image with backend "postgres", parsed with a URL standing in for the
/// one the environment gives (LASER_STORE_URL).
fn postgres_config(text: &str, shown: &str, base: &Path) -> laser_router::config::Config {
    assert!(
        text.contains("backend = \"postgres\""),
        "{shown}: not on PostgreSQL"
    );
    let text = text.replace(
        "backend = \"postgres\"",
        "backend = \"postgres\"\nurl = \"postgres://laser@db/laser\"",
    );
    laser_router::config::Config::parse(&text, shown, base).expect("valid config")
}

/// Two replicas on PostgreSQL in compose: the database is healthy before they start, both
/// replicas run the same config from the image and reach the `postgres` service, and both
/// answer to one network alias.
#[test]
fn the_postgres_compose_example_runs_two_replicas_on_one_database() {
    let compose = yaml("docker-compose.postgres.yml");
    let services = &compose["services"];
    assert!(
        services["postgres"]["image"]
            .as_str()
            .unwrap()
            .starts_with("postgres:")
    );
    let user = services["postgres"]["environment"]["POSTGRES_USER"]
        .as_str()
        .unwrap();
    for name in ["laser-router", "laser-router-b"] {
        let service = &services[name];
        let (local, text) = config_in_image(service);
        postgres_config(&text, &local, &repo("deploy/config"));
        let url = service["environment"]["LASER_STORE_URL"].as_str().unwrap();
        assert!(
            url.starts_with(&format!("postgres://{user}:")) && url.contains("@postgres:5432/"),
            "{name}: {url}"
        );
        assert_eq!(
            service["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy")
        );
        assert_eq!(
            service["networks"]["default"]["aliases"][0].as_str(),
            Some("laser-router")
        );
        // Each registers an address of its own for the other to forward to.
        let advertised = service["environment"]["LASER_ADVERTISE_ADDRESS"]
            .as_str()
            .unwrap();
        let own_alias = advertised.split(':').next().unwrap();
        assert!(
            service["networks"]["default"]["aliases"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|alias| alias.as_str() == Some(own_alias)),
            "{name}: {advertised} is not its own alias"
        );
    }
    let build = &services["laser-router-b"]["build"];
    assert!(
        repo(build["context"].as_str().unwrap())
            .join(build["dockerfile"].as_str().unwrap())
            .is_file()
    );
}

/// N replicas on Kubernetes: no volume (state is in PostgreSQL), the URL from the Secret the
/// example names, the ConfigMap mounted, readiness on gRPC, each advertising its pod IP, and a
/// headless Service that lists every replica (ready or not) for peers.
#[test]
fn kubernetes_replicas_share_postgres_and_find_each_other() {
    let deployment = yaml("deploy/k8s/replicas/deployment.yaml");
    let configmap = yaml("deploy/k8s/replicas/configmap.yaml");
    let secret = yaml("deploy/k8s/replicas/secret.example.yaml");
    let service = yaml("deploy/k8s/replicas/service.yaml");
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_sequence().unwrap();
    assert!(
        volumes
            .iter()
            .all(|v| v.get("persistentVolumeClaim").is_none()),
        "replicas keep no state on the pod"
    );
    assert_mounts_configmap(volumes, &configmap);
    let container = &pod["containers"][0];
    let env = container["env"].as_sequence().unwrap();
    let url = env
        .iter()
        .find(|e| e["name"].as_str() == Some("LASER_STORE_URL"))
        .expect("LASER_STORE_URL");
    let reference = &url["valueFrom"]["secretKeyRef"];
    assert_eq!(
        reference["name"].as_str(),
        secret["metadata"]["name"].as_str()
    );
    let key = reference["key"].as_str().unwrap();
    assert!(
        secret["stringData"][key]
            .as_str()
            .unwrap()
            .starts_with("postgres://")
    );
    assert_eq!(
        container["readinessProbe"]["grpc"]["port"].as_i64(),
        Some(50051)
    );
    assert!(
        container.get("livenessProbe").is_none(),
        "a liveness probe would restart every replica while PostgreSQL is down"
    );
    let advertise = env
        .iter()
        .find(|e| e["name"].as_str() == Some("LASER_ADVERTISE_ADDRESS"))
        .expect("LASER_ADVERTISE_ADDRESS");
    assert!(advertise["value"].as_str().unwrap().contains("$(POD_IP)"));
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let peers = yaml("deploy/k8s/replicas/service-peers.yaml");
    assert_eq!(peers["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        peers["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert_eq!(
        peers["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let toml = configmap["data"]["config.toml"].as_str().unwrap();
    postgres_config(toml, "replicas configmap", Path::new("/"));
}
