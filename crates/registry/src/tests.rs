//! The client against fake registries: auth flows, mirrors and fallback, retries, verification
//! and blob streaming.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt;

use crate::fake_registry::{digest_of, Content, FakeRequest, FakeServer, Reply};
use crate::manifest::media_type;
use crate::*;

fn config() -> RegistryConfig {
    RegistryConfig {
        retry: RetryPolicy {
            attempts: 3,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        ..Default::default()
    }
}

fn client(cfg: RegistryConfig) -> Client {
    Client::new(cfg, Arc::new(StaticCredentials::none())).unwrap()
}

fn client_with(cfg: RegistryConfig, host: &str, user: &str, pass: &str) -> Client {
    let creds = StaticCredentials::none().with(
        host,
        Credentials {
            username: user.into(),
            password: pass.into(),
        },
    );
    Client::new(cfg, Arc::new(creds)).unwrap()
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

fn reference(server: &FakeServer, rest: &str) -> Reference {
    Reference::parse(&format!("{}/{rest}", server.host())).unwrap()
}

async fn collect(mut s: BlobStream) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = s.stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn layer_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// A registry with berth/hello:latest (OCI, amd64) and :v2s2 (Docker), plus the layer.
fn hello() -> (Content, Vec<u8>) {
    let mut c = Content::default();
    let layer = layer_bytes(100_000);
    c.add_image("berth/hello", Some("latest"), &amd64(), &layer, false);
    c.add_image("berth/hello", Some("v2s2"), &amd64(), &layer, true);
    (c, layer)
}

async fn open_server(content: Content) -> FakeServer {
    FakeServer::start(move |req| content.serve(req)).await
}

#[tokio::test]
async fn resolves_a_manifest_and_streams_its_layer() {
    let (content, layer) = hello();
    let server = open_server(content).await;
    let c = client(config());
    for tag in ["latest", "v2s2"] {
        let r = reference(&server, &format!("berth/hello:{tag}"));
        let res = c.resolve(&r, &amd64()).await.unwrap();
        assert!(res.index.is_none());
        assert_eq!(res.repo_digest, res.manifest.digest);
        assert_eq!(res.manifest.digest, digest_of(&res.manifest.bytes));
        assert_eq!(res.config.digest, digest_of(&res.config.bytes));
        let want_mt = if tag == "latest" {
            media_type::OCI_MANIFEST
        } else {
            media_type::DOCKER_MANIFEST
        };
        assert_eq!(res.manifest.media_type, want_mt);
        assert_eq!(res.layers.len(), 1);
        // A plain-http loopback registry: https was tried and fell back to http.
        assert_eq!(
            res.endpoint.base.as_str(),
            format!("http://{}/", server.host())
        );
        assert!(!res.endpoint.mirror && res.skipped.is_empty());

        let blob = c.fetch_blob(&r, &res.layers[0]).await.unwrap();
        assert_eq!(blob.endpoint.base, res.endpoint.base);
        let got = collect(blob).await.unwrap();
        assert_eq!(got, layer);
        assert_eq!(digest_of(&got), res.layers[0].digest);

        // Pinned by the digest it resolved to, tag kept.
        let pinned = r.with_digest(&res.repo_digest);
        let again = c.resolve(&pinned, &amd64()).await.unwrap();
        assert_eq!(again.manifest, res.manifest);
    }
    // The manifest request asked for every supported type.
    let accept = server
        .requests()
        .into_iter()
        .find(|r| r.path().contains("/manifests/"))
        .unwrap();
    for t in [
        media_type::OCI_MANIFEST,
        media_type::OCI_INDEX,
        media_type::DOCKER_MANIFEST,
        media_type::DOCKER_MANIFEST_LIST,
    ] {
        assert!(accept.header("accept").unwrap().contains(t));
    }
    // The scheme was probed once and remembered.
    assert_eq!(server.count("/v2/") - server.count("/v2/berth"), 1);
}

#[tokio::test]
async fn selects_the_platform_from_an_index() {
    let mut content = Content::default();
    let arm64 = Platform::parse("linux/arm64/v8").unwrap();
    let a = content.add_image("berth/multiarch", None, &amd64(), b"amd64 layer", false);
    let b = content.add_image("berth/multiarch", None, &arm64, b"arm64 layer", true);
    let index = content.add_index("berth/multiarch", Some("latest"), &[a.clone(), b.clone()]);
    let server = open_server(content).await;
    let c = client(config());
    let r = reference(&server, "berth/multiarch");
    let res = c.resolve(&r, &arm64).await.unwrap();
    assert_eq!(res.repo_digest, index.digest);
    assert_eq!(res.index.as_ref().unwrap().digest, index.digest);
    assert_eq!(res.manifest.digest, b.digest);
    let layer = collect(c.fetch_blob(&r, &res.layers[0]).await.unwrap())
        .await
        .unwrap();
    assert_eq!(layer, b"arm64 layer");
    let res = c
        .resolve(&r.with_digest(&index.digest), &amd64())
        .await
        .unwrap();
    assert_eq!(res.manifest.digest, a.digest);

    match c
        .resolve(&r, &Platform::parse("linux/s390x").unwrap())
        .await
    {
        Err(RegistryError::NoMatchingPlatform { wanted, available }) => {
            assert_eq!(wanted, "linux/s390x");
            assert_eq!(available, ["linux/amd64", "linux/arm64/v8"]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn basic_auth_flow() {
    let (content, _) = hello();
    let server = FakeServer::start(move |req| {
        let good = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:pw"));
        if req.header("authorization") != Some(good.as_str()) {
            return Reply::json(401, serde_json::json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}))
                .header("WWW-Authenticate", r#"Basic realm="fake registry""#);
        }
        content.serve(req)
    })
    .await;
    let r = reference(&server, "berth/hello");

    let e = client(config()).resolve(&r, &amd64()).await.unwrap_err();
    assert!(e.is_auth(), "{e:?}");
    assert!(e.to_string().contains("no credentials configured"), "{e}");

    let e = client_with(config(), &server.host(), "alice", "wrong")
        .resolve(&r, &amd64())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
    assert!(
        e.to_string().contains("refused") && !e.to_string().contains("wrong"),
        "{e}"
    );

    let c = client_with(config(), &server.host(), "alice", "pw");
    let res = c.resolve(&r, &amd64()).await.unwrap();
    collect(c.fetch_blob(&r, &res.layers[0]).await.unwrap())
        .await
        .unwrap();
    // Once Basic is known, credentials go with every request: no more 401 round trips.
    let before = server.requests().len();
    c.resolve(&r, &amd64()).await.unwrap();
    assert_eq!(
        server.requests().len() - before,
        2,
        "manifest + config, no 401s"
    );

    let anon = client(config());
    let good = Credentials {
        username: "alice".into(),
        password: "pw".into(),
    };
    anon.check_login(&server.host(), &good).await.unwrap();
    let bad = Credentials {
        username: "alice".into(),
        password: "nope".into(),
    };
    assert!(anon
        .check_login(&server.host(), &bad)
        .await
        .unwrap_err()
        .is_auth());
}

/// A registry whose token server lives on the same fake server at /token.
struct TokenRegistry {
    server: FakeServer,
    issued: Arc<AtomicUsize>,
    /// Tokens the registry accepts.
    valid: Arc<Mutex<Vec<String>>>,
}

async fn token_registry(content: Content, require_creds: bool) -> TokenRegistry {
    let issued = Arc::new(AtomicUsize::new(0));
    let valid: Arc<Mutex<Vec<String>>> = Arc::default();
    let port = Arc::new(Mutex::new(0u16));
    let (i, v, p) = (issued.clone(), valid.clone(), port.clone());
    let server = FakeServer::start(move |req: &FakeRequest| {
        if req.path() == "/token" {
            let good = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("bob:tok-pw")
            );
            let authed = req.header("authorization") == Some(good.as_str());
            if (req.header("authorization").is_some() || require_creds) && !authed {
                return Reply::json(401, serde_json::json!({"details": "bad credentials"}));
            }
            assert_eq!(req.query("service").as_deref(), Some("fake-registry"));
            let n = i.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("tok-{n}");
            v.lock().unwrap().push(format!(
                "{token} {}",
                req.query("scope").unwrap_or_default()
            ));
            return Reply::json(200, serde_json::json!({"token": token, "expires_in": 300}));
        }
        let presented = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::to_string);
        let repo_scope = req
            .path()
            .strip_prefix("/v2/")
            .and_then(|r| {
                r.rsplit_once("/manifests/")
                    .or_else(|| r.rsplit_once("/blobs/"))
            })
            .map(|(repo, _)| format!("repository:{repo}:pull"))
            .unwrap_or_default();
        let ok = presented.is_some_and(|t| {
            v.lock()
                .unwrap()
                .iter()
                .any(|entry| *entry == format!("{t} {repo_scope}"))
        });
        if !ok {
            let realm = format!("http://127.0.0.1:{}/token", p.lock().unwrap());
            return Reply::status(401).header(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer realm="{realm}",service="fake-registry",scope="{repo_scope},push""#
                ),
            );
        }
        content.serve(req)
    })
    .await;
    *port.lock().unwrap() = server.addr.port();
    TokenRegistry {
        server,
        issued,
        valid,
    }
}

#[tokio::test]
async fn bearer_flow_reuses_its_token() {
    let (content, layer) = hello();
    let reg = token_registry(content, false).await;
    let c = client(config());
    let r = reference(&reg.server, "berth/hello");
    let res = c.resolve(&r, &amd64()).await.unwrap();
    assert_eq!(reg.issued.load(Ordering::SeqCst), 1);
    c.resolve(&r, &amd64()).await.unwrap();
    let got = collect(c.fetch_blob(&r, &res.layers[0]).await.unwrap())
        .await
        .unwrap();
    assert_eq!(got, layer);
    assert_eq!(
        reg.issued.load(Ordering::SeqCst),
        1,
        "one token for two resolves and a blob"
    );
    // The token was asked for the repository's pull scope, not the challenge's wider one.
    let token_req = reg
        .server
        .requests()
        .into_iter()
        .find(|r| r.path() == "/token")
        .unwrap();
    assert_eq!(
        token_req.query("scope").as_deref(),
        Some("repository:berth/hello:pull")
    );
    assert!(
        token_req.header("authorization").is_none(),
        "anonymous without credentials"
    );

    // The registry stops accepting the cached token: it is dropped and replaced once.
    reg.valid.lock().unwrap().clear();
    c.resolve(&r, &amd64()).await.unwrap();
    assert_eq!(reg.issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bearer_flow_with_credentials() {
    let (content, _) = hello();
    let reg = token_registry(content, true).await;
    let r = reference(&reg.server, "berth/hello");
    let e = client(config()).resolve(&r, &amd64()).await.unwrap_err();
    assert!(e.is_auth(), "{e:?}");
    assert!(e.to_string().contains("log in"), "{e}");

    let e = client_with(config(), &reg.server.host(), "bob", "bad")
        .resolve(&r, &amd64())
        .await
        .unwrap_err();
    assert!(e.is_auth() && e.to_string().contains("refused"), "{e}");

    let c = client_with(config(), &reg.server.host(), "bob", "tok-pw");
    c.resolve(&r, &amd64()).await.unwrap();
    c.resolve(&r, &amd64()).await.unwrap();
    assert_eq!(reg.issued.load(Ordering::SeqCst), 1);

    let login = client(config());
    let good = Credentials {
        username: "bob".into(),
        password: "tok-pw".into(),
    };
    login
        .check_login(&format!("http://{}/", reg.server.host()), &good)
        .await
        .unwrap();
    let token_req = reg
        .server
        .requests()
        .into_iter()
        .rfind(|r| r.path() == "/token")
        .unwrap();
    assert_eq!(token_req.query("account").as_deref(), Some("bob"));
    let bad = Credentials {
        username: "bob".into(),
        password: "x".into(),
    };
    assert!(login
        .check_login(&reg.server.host(), &bad)
        .await
        .unwrap_err()
        .is_auth());
}

#[tokio::test]
async fn a_failing_mirror_is_skipped_visibly() {
    let (content, layer) = hello();
    let upstream = open_server(content).await;
    let mirror = FakeServer::start(|_| Reply::body(500, "text/plain", "mirror broken")).await;
    let mut cfg = config();
    let mirror_url = url::Url::parse(&format!("http://{}", mirror.host())).unwrap();
    cfg.mirrors
        .insert(upstream.host(), vec![mirror_url.clone()]);
    let c = client(cfg);
    let r = reference(&upstream, "berth/hello");
    let res = c.resolve(&r, &amd64()).await.unwrap();
    assert!(!res.endpoint.mirror);
    assert_eq!(res.skipped.len(), 1);
    assert_eq!(res.skipped[0].endpoint.base, mirror_url);
    assert!(
        res.skipped[0].reason.contains("500") && res.skipped[0].reason.contains("mirror broken"),
        "{}",
        res.skipped[0].reason
    );
    // Retried per the policy before being skipped.
    assert_eq!(mirror.count("/v2/"), 3);

    let blob = c.fetch_blob(&r, &res.layers[0]).await.unwrap();
    assert_eq!(blob.skipped.len(), 1);
    assert!(!blob.endpoint.mirror);
    assert_eq!(collect(blob).await.unwrap(), layer);
}

#[tokio::test]
async fn a_working_mirror_is_used_and_set_config_applies_live() {
    let (content, _) = hello();
    let upstream = open_server(content.clone()).await;
    let mirror = open_server(content).await;
    let c = client(config());
    let r = reference(&upstream, "berth/hello");
    assert!(!c.resolve(&r, &amd64()).await.unwrap().endpoint.mirror);

    let mut cfg = config();
    cfg.mirrors.insert(
        "*".into(),
        vec![url::Url::parse(&format!("http://{}/", mirror.host())).unwrap()],
    );
    c.set_config(cfg);
    let res = c.resolve(&r, &amd64()).await.unwrap();
    assert!(res.endpoint.mirror);
    assert_eq!(res.endpoint.host, mirror.host());
    assert!(mirror.count("/v2/berth/hello/manifests/latest") == 1);
}

#[tokio::test]
async fn a_blob_is_fetched_again_without_the_endpoints_excluded() {
    let (content, layer) = hello();
    let upstream = open_server(content.clone()).await;
    let mirror = open_server(content).await;
    let mut cfg = config();
    let mirror_url = url::Url::parse(&format!("http://{}/", mirror.host())).unwrap();
    cfg.mirrors
        .insert(upstream.host(), vec![mirror_url.clone()]);
    let c = client(cfg);
    let r = reference(&upstream, "berth/hello");
    let res = c.resolve(&r, &amd64()).await.unwrap();
    let first = c.fetch_blob(&r, &res.layers[0]).await.unwrap();
    assert!(first.endpoint.mirror);
    let excluded = first.endpoint.clone();
    drop(first);
    let again = c
        .fetch_blob_excluding(&r, &res.layers[0], std::slice::from_ref(&excluded))
        .await
        .unwrap();
    assert!(!again.endpoint.mirror, "the upstream serves it");
    assert!(
        again.skipped.is_empty(),
        "an excluded endpoint is not tried"
    );
    assert_eq!(collect(again).await.unwrap(), layer);

    // Every endpoint excluded: an error naming them, no request made.
    let before = upstream.requests().len();
    let up = Endpoint::upstream(&upstream.host(), "http");
    let e = c
        .fetch_blob_excluding(&r, &res.layers[0], &[excluded, up])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("failed verification"), "{e}");
    assert!(e.to_string().contains(mirror_url.as_str()), "{e}");
    assert_eq!(upstream.requests().len(), before);
}

#[tokio::test]
async fn probing_a_mirror_reports_what_it_answers() {
    let (content, _) = hello();
    let mirror = open_server(content).await;
    let c = client(config());
    let url = url::Url::parse(&format!("http://{}/", mirror.host())).unwrap();
    let p = c.probe_mirror(&url, Some("berth/hello")).await;
    assert!(p.reachable, "{p:?}");
    assert_eq!(p.status, Some(200));
    assert_eq!(p.tls, crate::TlsUse::None);
    assert_eq!(p.auth.as_deref(), Some("none"));
    let image = p.image.unwrap();
    assert!(image.found, "{image:?}");
    assert_eq!(image.repository, "berth/hello");
    let p = c.probe_mirror(&url, Some("berth/absent")).await;
    assert!(!p.image.unwrap().found);
    let bad = url::Url::parse(&format!("http://{}/v2/", mirror.host())).unwrap();
    let p = c.probe_mirror(&bad, None).await;
    assert!(!p.reachable);
    assert!(p.error.unwrap().contains("path"));
}

#[tokio::test]
async fn not_found_everywhere_names_the_reference() {
    let (content, _) = hello();
    let upstream = open_server(content).await;
    let mirror = open_server(Content::default()).await;
    let mut cfg = config();
    cfg.mirrors.insert(
        upstream.host(),
        vec![url::Url::parse(&format!("http://{}", mirror.host())).unwrap()],
    );
    // An unusable mirror URL is skipped with its reason, not fatal.
    cfg.mirrors
        .get_mut(&upstream.host())
        .unwrap()
        .push(url::Url::parse("http://127.0.0.1:1/v2/").unwrap());
    let c = client(RegistryConfig::default());
    c.set_config(cfg);
    let r = reference(&upstream, "berth/nothing:1");
    let e = c.resolve(&r, &amd64()).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(e.to_string().contains(&format!("manifest for {r}")), "{e}");

    // The image is on the upstream only: both mirrors skipped, the reasons say why.
    let res = c
        .resolve(&reference(&upstream, "berth/hello"), &amd64())
        .await
        .unwrap();
    assert_eq!(res.skipped.len(), 2);
    assert!(
        res.skipped[0].reason.contains("not found"),
        "{}",
        res.skipped[0].reason
    );
    assert!(
        res.skipped[1].reason.contains("path"),
        "{}",
        res.skipped[1].reason
    );
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let (content, _) = hello();
    let failures = Arc::new(AtomicUsize::new(2));
    let f = failures.clone();
    let server = FakeServer::start(move |req| {
        if req.path().contains("/manifests/") && f.load(Ordering::SeqCst) > 0 {
            f.fetch_sub(1, Ordering::SeqCst);
            return Reply::status(503);
        }
        if req.path().contains("/manifests/bad") {
            return Reply::json(
                400,
                serde_json::json!({"errors":[{"code":"TAG_INVALID","message":"no"}]}),
            );
        }
        content.serve(req)
    })
    .await;
    let c = client(config());
    c.resolve(&reference(&server, "berth/hello"), &amd64())
        .await
        .unwrap();
    assert_eq!(server.count("/v2/berth/hello/manifests/"), 3);

    let e = c
        .resolve(&reference(&server, "berth/hello:bad"), &amd64())
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Http { status: 400, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("TAG_INVALID: no"), "{e}");
    assert_eq!(server.count("/v2/berth/hello/manifests/bad"), 1);

    failures.store(10, Ordering::SeqCst);
    let e = c
        .resolve(&reference(&server, "berth/hello"), &amd64())
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Http { status: 503, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_dead_registry_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let r = Reference::parse(&format!("{addr}/x/y")).unwrap();
    let e = client(config()).resolve(&r, &amd64()).await.unwrap_err();
    assert!(matches!(e, RegistryError::Transport { .. }), "{e:?}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[tokio::test]
async fn bad_manifests_are_refused() {
    let mut content = Content::default();
    content.add_manifest(
        "bad/json",
        Some("latest"),
        media_type::OCI_MANIFEST,
        b"{\"schemaVersion\": 2, \"config\": ",
    );
    content.add_manifest(
        "bad/schema1",
        Some("latest"),
        media_type::DOCKER_SCHEMA1_SIGNED,
        br#"{"schemaVersion":1,"name":"x"}"#,
    );
    content.add_manifest(
        "bad/helm",
        Some("latest"),
        "application/vnd.cncf.helm.chart.v1+json",
        br#"{"schemaVersion":2}"#,
    );
    let big = format!(
        "{{\"schemaVersion\":2,\"pad\":\"{}\"}}",
        "x".repeat(4 * 1024 * 1024)
    );
    content.add_manifest(
        "bad/big",
        Some("latest"),
        media_type::OCI_MANIFEST,
        big.as_bytes(),
    );
    let server = open_server(content).await;
    let c = client(config());

    match c.resolve(&reference(&server, "bad/json"), &amd64()).await {
        Err(RegistryError::InvalidManifest { what, message }) => {
            assert!(what.contains("bad/json"), "{what}");
            assert!(message.contains("EOF while parsing"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let e = c
        .resolve(&reference(&server, "bad/schema1"), &amd64())
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::UnsupportedMediaType { .. })
            && e.to_string().contains("schema 1"),
        "{e}"
    );
    let e = c
        .resolve(&reference(&server, "bad/helm"), &amd64())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("application/vnd.cncf.helm.chart.v1+json"),
        "{e}"
    );
    let e = c
        .resolve(&reference(&server, "bad/big"), &amd64())
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::TooLarge { limit: 4194304, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn digests_are_verified() {
    let (mut content, _) = hello();
    // A registry that serves other bytes under a digest.
    let real = content.manifests[&("berth/hello".to_string(), "latest".to_string())].clone();
    let fake_digest = digest_of(b"something else");
    content
        .manifests
        .insert(("berth/hello".into(), fake_digest.clone()), real.clone());
    let server = FakeServer::start(move |req| {
        if req.path().ends_with("/manifests/lying-tag") {
            return Reply::body(200, &real.0, real.1.clone())
                .header("Docker-Content-Digest", &digest_of(b"other"));
        }
        content.serve(req)
    })
    .await;
    let c = client(config());
    let r = reference(&server, &format!("berth/hello@{fake_digest}"));
    match c.resolve(&r, &amd64()).await {
        Err(RegistryError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, fake_digest);
            assert_eq!(actual, digest_of(&server_manifest(&c, &server).await));
        }
        other => panic!("{other:?}"),
    }
    let e = c
        .resolve(&reference(&server, "berth/hello:lying-tag"), &amd64())
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e:?}");
}

async fn server_manifest(c: &Client, server: &FakeServer) -> Vec<u8> {
    c.resolve(&reference(server, "berth/hello"), &amd64())
        .await
        .unwrap()
        .manifest
        .bytes
        .to_vec()
}

fn blob_desc(bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: "application/octet-stream".into(),
        digest: digest_of(bytes),
        size: bytes.len() as u64,
        platform: None,
        urls: None,
        annotations: None,
    }
}

#[tokio::test]
async fn a_blob_may_not_be_longer_than_its_descriptor() {
    let data = layer_bytes(50_000);
    let body = data.clone();
    let server = FakeServer::start(move |req| {
        let mut longer = body.clone();
        longer.extend_from_slice(b"extra");
        if req.path().contains("/blobs/") && req.path().contains("chunked") {
            Reply::CloseDelimited {
                headers: vec![],
                body: longer.into(),
            }
        } else {
            Reply::body(200, "application/octet-stream", longer)
        }
    })
    .await;
    let c = client(config());
    let desc = blob_desc(&data);
    // Without Content-Length: the stream stops with an error once past the size.
    let r = reference(&server, "x/chunked");
    let e = collect(c.fetch_blob(&r, &desc).await.unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::TooLarge { limit: 50_000, .. }),
        "{e:?}"
    );
    // With a Content-Length over the size: refused before streaming.
    let e = c
        .fetch_blob(&reference(&server, "x/plain"), &desc)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { .. }), "{e:?}");
}

#[tokio::test]
async fn a_dropped_blob_resumes_with_range() {
    let data = layer_bytes(300_000);
    let body = bytes::Bytes::from(data.clone());
    let server = FakeServer::start(move |req| {
        let range_from = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<usize>().ok());
        let total = body.len();
        match range_from {
            // The first GET is cut after 100 000 bytes, the first resume after 200 000.
            None => Reply::Truncated {
                headers: vec![],
                declared: total,
                body: body.slice(..100_000),
            },
            Some(from) if from < 200_000 => Reply::Truncated {
                headers: vec![
                    (":status".into(), "206".into()),
                    (
                        "Content-Range".into(),
                        format!("bytes {from}-{}/{total}", total - 1),
                    ),
                ],
                declared: total - from,
                body: body.slice(from..200_000),
            },
            Some(from) => Reply::Full {
                status: 206,
                headers: vec![(
                    "Content-Range".into(),
                    format!("bytes {from}-{}/{total}", total - 1),
                )],
                body: body.slice(from..),
            },
        }
    })
    .await;
    let c = client(config());
    let got = collect(
        c.fetch_blob(&reference(&server, "x/y"), &blob_desc(&data))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    let ranges: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, ["bytes=100000-", "bytes=200000-"]);
}

#[tokio::test]
async fn a_dropped_blob_fails_when_the_server_cannot_resume() {
    let data = bytes::Bytes::from(layer_bytes(10_000));
    let body = data.clone();
    let server = FakeServer::start(move |_| Reply::Truncated {
        headers: vec![],
        declared: body.len(),
        body: body.slice(..4_000),
    })
    .await;
    let c = client(config());
    let e = collect(
        c.fetch_blob(&reference(&server, "x/y"), &blob_desc(&data))
            .await
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RegistryError::Transport { .. }), "{e:?}");
    assert!(e.to_string().contains("does not resume"), "{e}");
}

#[test]
fn errors_read_well() {
    let e = RegistryError::NoMatchingPlatform {
        wanted: "linux/s390x".into(),
        available: vec!["linux/amd64".into()],
    };
    assert_eq!(e.to_string(), "no matching manifest for linux/s390x in the manifest list entries (available: linux/amd64)");
    let e = RegistryError::AllEndpointsFailed {
        attempts: vec![
            ("http://m/".into(), "boom".into()),
            ("https://u/".into(), "bang".into()),
        ],
    };
    assert_eq!(
        e.to_string(),
        "all endpoints failed: http://m/: boom; https://u/: bang"
    );
    let e: RegistryError = Reference::parse("A").unwrap_err().into();
    assert_eq!(
        e.to_string(),
        "invalid reference format: repository name must be lowercase"
    );
}

/// How the upload registry of [`upload_registry`] misbehaves.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Lie {
    Nothing,
    /// Acknowledges less than a chunk sent.
    ShortRange,
    /// Announces another digest than the content's.
    WrongDigest,
    /// Opens an upload without a Location.
    NoLocation,
}

/// A registry that has no blob and takes uploads: the POST's Location is relative, each
/// PATCH's absolute and carrying the bytes so far; a PUT checks the digest of what came.
fn upload_registry(
    lie: Lie,
    min_chunk: Option<u64>,
) -> impl Fn(&FakeRequest) -> Reply + Send + Sync + 'static {
    let received: Arc<Mutex<Vec<u8>>> = Arc::default();
    move |req| {
        let host = req.header("host").unwrap_or("").to_string();
        let path = req.path().to_string();
        match req.method.as_str() {
            "HEAD" => Reply::status(404),
            "POST" if path.ends_with("/blobs/uploads/") => {
                received.lock().unwrap().clear();
                if lie == Lie::NoLocation {
                    return Reply::status(202);
                }
                let mut r =
                    Reply::status(202).header("Location", "/v2/berth/up/blobs/uploads/u1?at=0");
                if let Some(m) = min_chunk {
                    r = r.header("OCI-Chunk-Min-Length", &m.to_string());
                }
                r
            }
            "PATCH" => {
                let mut got = received.lock().unwrap();
                got.extend_from_slice(&req.body);
                let end = got.len() as u64 - 1;
                let shown = if lie == Lie::ShortRange { end / 2 } else { end };
                Reply::status(202)
                    .header(
                        "Location",
                        &format!(
                            "http://{host}/v2/berth/up/blobs/uploads/u1?at={}",
                            got.len()
                        ),
                    )
                    .header("Range", &format!("0-{shown}"))
            }
            "PUT" if path.contains("/blobs/uploads/") => {
                let mut got = received.lock().unwrap();
                got.extend_from_slice(&req.body);
                let digest = digest_of(&got);
                if Some(&digest) != req.query("digest").as_ref() {
                    return Reply::json(
                        400,
                        serde_json::json!({"errors": [{"code": "DIGEST_INVALID",
                            "message": "provided digest did not match uploaded content"}]}),
                    );
                }
                let announced = match lie {
                    Lie::WrongDigest => digest_of(b"something else"),
                    _ => digest,
                };
                Reply::status(201).header("Docker-Content-Digest", &announced)
            }
            "PUT" if path.contains("/manifests/") => {
                let announced = match lie {
                    Lie::WrongDigest => digest_of(b"something else"),
                    _ => digest_of(&req.body),
                };
                Reply::status(201).header("Docker-Content-Digest", &announced)
            }
            _ => Reply::status(404),
        }
    }
}

fn upload_body(bytes: &[u8], piece: usize) -> UploadBody {
    let pieces: Vec<Result<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>> = bytes
        .chunks(piece)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(pieces))
}

#[tokio::test]
async fn chunked_uploads_follow_locations_and_the_registrys_minimum() {
    let server = FakeServer::start(upload_registry(Lie::Nothing, Some(3000))).await;
    let c = client(config());
    let r = reference(&server, "berth/up:latest");
    let blob = layer_bytes(10_000);
    let digest = digest_of(&blob);
    assert!(!c.blob_exists(&r, &digest).await.unwrap());
    let policy = UploadPolicy {
        chunk_threshold: 0,
        chunk_size: 1000,
    };
    c.push_blob(&r, &digest, 10_000, upload_body(&blob, 777), policy, None)
        .await
        .unwrap();
    let reqs = server.requests();
    let patches: Vec<&FakeRequest> = reqs.iter().filter(|q| q.method == "PATCH").collect();
    let ranges: Vec<&str> = patches
        .iter()
        .map(|q| q.header("content-range").unwrap())
        .collect();
    // The registry's minimum (3000) wins over the policy's 1000.
    assert_eq!(ranges, ["0-2999", "3000-5999", "6000-8999", "9000-9999"]);
    // The relative Location of the POST, then each PATCH's absolute one.
    let at: Vec<String> = patches.iter().map(|q| q.query("at").unwrap()).collect();
    assert_eq!(at, ["0", "3000", "6000", "9000"]);
    let put = reqs.iter().find(|q| q.method == "PUT").unwrap();
    assert_eq!(put.query("at").as_deref(), Some("10000"));
    assert_eq!(put.query("digest"), Some(digest.clone()));
    assert!(put.body.is_empty());
    assert_eq!(
        patches.iter().map(|q| q.body.len()).sum::<usize>(),
        blob.len()
    );

    // Below the threshold: one PUT with every byte.
    let server = FakeServer::start(upload_registry(Lie::Nothing, None)).await;
    let r = reference(&server, "berth/up:latest");
    c.push_blob(
        &r,
        &digest,
        10_000,
        upload_body(&blob, 777),
        UploadPolicy::default(),
        None,
    )
    .await
    .unwrap();
    let reqs = server.requests();
    assert!(!reqs.iter().any(|q| q.method == "PATCH"));
    let put = reqs.iter().find(|q| q.method == "PUT").unwrap();
    assert_eq!(&put.body[..], &blob[..]);
    assert_eq!(put.header("content-type"), Some("application/octet-stream"));
}

#[tokio::test]
async fn a_registry_that_lies_about_an_upload_is_an_error() {
    let c = client(config());
    let blob = layer_bytes(5000);
    let digest = digest_of(&blob);
    let chunked = UploadPolicy {
        chunk_threshold: 0,
        chunk_size: 1000,
    };
    for (lie, policy, expect) in [
        (Lie::ShortRange, chunked, "holds bytes 0-499"),
        (
            Lie::WrongDigest,
            UploadPolicy::default(),
            "what the registry says it stored",
        ),
        (
            Lie::NoLocation,
            UploadPolicy::default(),
            "no Location header",
        ),
    ] {
        let server = FakeServer::start(upload_registry(lie, None)).await;
        let r = reference(&server, "berth/up:latest");
        let e = c
            .push_blob(&r, &digest, 5000, upload_body(&blob, 999), policy, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(expect), "{lie:?}: {e}");
    }

    // Bytes that do not hash to the digest: the registry's own error, with its code.
    let server = FakeServer::start(upload_registry(Lie::Nothing, None)).await;
    let r = reference(&server, "berth/up:latest");
    let e = c
        .push_blob(
            &r,
            &digest_of(b"other"),
            5000,
            upload_body(&blob, 999),
            UploadPolicy::default(),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("DIGEST_INVALID"), "{e}");
    // A body that ends before its size never reaches the PUT's end.
    let e = c
        .push_blob(
            &r,
            &digest,
            6000,
            upload_body(&blob, 999),
            UploadPolicy::default(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Transport { .. }), "{e}");

    // A manifest stored under another digest than its bytes'.
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let ok = FakeServer::start(upload_registry(Lie::Nothing, None)).await;
    let pushed = c
        .push_manifest(
            &reference(&ok, "berth/up:latest"),
            "latest",
            media_type::OCI_MANIFEST,
            manifest.clone().into(),
        )
        .await
        .unwrap();
    assert_eq!(pushed, digest_of(&manifest));
    let put = ok
        .requests()
        .into_iter()
        .find(|q| q.method == "PUT")
        .unwrap();
    assert_eq!(&put.body[..], &manifest[..]);
    assert_eq!(put.header("content-type"), Some(media_type::OCI_MANIFEST));
    let liar = FakeServer::start(upload_registry(Lie::WrongDigest, None)).await;
    let e = c
        .push_manifest(
            &reference(&liar, "berth/up:latest"),
            "latest",
            media_type::OCI_MANIFEST,
            manifest.into(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { .. }), "{e}");
}
