//! TLS on the gRPC port, with and without required client certificates. Certificates are
//! made for each run with the openssl command line.

use std::path::Path;
use std::process::Command;

use laser_router::api::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::{Server, config};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        status.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1, and a client certificate.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=laser-test-ca",
        ],
    );
    for (name, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("{san}basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

async fn tls_channel(
    server: &Server,
    dir: &Path,
    client_certificate: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(dir.join("ca.pem")).unwrap(),
        ))
        .domain_name("localhost");
    if client_certificate {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join("client.pem")).unwrap(),
            std::fs::read(dir.join("client.key")).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn list(channel: Channel) -> Result<usize, tonic::Status> {
    pb::admin_client::AdminClient::new(channel)
        .list_reward_models(pb::ListRewardModelsRequest {})
        .await
        .map(|r| r.into_inner().reward_models.len())
}

fn tls_config(dir: &Path, client_ca: bool) -> String {
    let mut text = format!(
        "[server.tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
        dir.join("server.pem").display(),
        dir.join("server.key").display()
    );
    if client_ca {
        text.push_str(&format!(
            "client_ca_path = \"{}\"\n",
            dir.join("ca.pem").display()
        ));
    }
    text + &config(4, &["length"], "")
}

#[tokio::test]
async fn tls_handshakes_with_and_without_required_client_certificates() {
    let certificates = tempfile::tempdir().unwrap();
    make_certificates(certificates.path());

    let server = Server::start(&tls_config(certificates.path(), false));
    let channel = tls_channel(&server, certificates.path(), false)
        .await
        .expect("TLS handshake");
    assert_eq!(list(channel).await.expect("served over TLS"), 1);
    // Plaintext gRPC does not get through.
    let plain = Channel::from_shared(server.channel_uri())
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(list(plain).await.is_err(), "plaintext refused");
    }

    let mutual = Server::start(&tls_config(certificates.path(), true));
    let without = match tls_channel(&mutual, certificates.path(), false).await {
        Ok(channel) => list(channel).await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    assert!(
        without.is_err(),
        "a client without a certificate is refused"
    );
    let channel = tls_channel(&mutual, certificates.path(), true)
        .await
        .expect("mutual TLS handshake");
    assert_eq!(
        list(channel)
            .await
            .expect("served with a client certificate"),
        1
    );
}

/// The HTTP/JSON port has the gRPC port's TLS: HTTPS with the server's certificate works,
/// plain HTTP does not, and with a client CA a client certificate is required.
#[tokio::test]
async fn the_http_port_has_the_same_tls() {
    let certificates = tempfile::tempdir().unwrap();
    let dir = certificates.path();
    make_certificates(dir);
    let body =
        r#"{"queries":[{"id":"q","context":[1,0,0,0],"prompt":"p","responses":["a","bb"]}]}"#;
    let curl = |url: String, extra: &[String]| {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
            ])
            .args(["--data", body])
            .args(extra)
            .arg(url)
            .output()
            .expect("curl")
    };
    for client_ca in [false, true] {
        let config = format!(
            "[server]\nhttp_listen = \"127.0.0.1:0\"\n{}",
            tls_config(dir, client_ca)
        );
        let server = Server::start(&config);
        let addr = server.http.expect("the HTTP port is on");
        let url = format!("https://localhost:{}/v1/routers/run/score", addr.port());
        let ca = vec![
            "--cacert".to_string(),
            dir.join("ca.pem").display().to_string(),
        ];
        let plain = curl(
            format!("http://127.0.0.1:{}/v1/routers/run/score", addr.port()),
            &[],
        );
        assert!(
            !String::from_utf8_lossy(&plain.stdout).contains("results"),
            "plain HTTP must not be served"
        );
        let mut with_certificate = ca.clone();
        with_certificate.extend([
            "--cert".to_string(),
            dir.join("client.pem").display().to_string(),
            "--key".to_string(),
            dir.join("client.key").display().to_string(),
        ]);
        let resolve = vec![
            "--resolve".to_string(),
            format!("localhost:{}:127.0.0.1", addr.port()),
        ];
        let anonymous = curl(url.clone(), &[ca.clone(), resolve.clone()].concat());
        let identified = curl(url.clone(), &[with_certificate, resolve].concat());
        let served = |output: &std::process::Output| {
            String::from_utf8_lossy(&output.stdout).contains("\"results\"")
        };
        assert!(
            served(&identified),
            "{}",
            String::from_utf8_lossy(&identified.stderr)
        );
        assert_eq!(
            served(&anonymous),
            !client_ca,
            "client certificates required: {client_ca}"
        );
    }
}
