//! The client against the project's real fixture registries (distribution 2.8: open, Basic,
//! and token auth with its token server), started by `scripts/fixtures up`.
//!
//! Needs `BERTH_FIXTURES_ENV` pointing at the env file `scripts/fixtures up` writes
//! (`$HOME/.cache/berth/fixtures/env`); without it every test fails and says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_registry::{
    Client, Credentials, Descriptor, Platform, Reference, RegistryConfig, RegistryError,
    RetryPolicy, StaticCredentials,
};
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

/// The fixture environment, or None when the tests are explicitly skipped.
struct Fixtures {
    vars: HashMap<String, String>,
    /// images.json: what `scripts/fixtures up` pushed, with digests.
    images: Vec<serde_json::Value>,
}

impl Fixtures {
    fn load() -> Option<Fixtures> {
        let path = std::env::var("BERTH_FIXTURES_ENV").unwrap_or_else(|_| {
            panic!(
                "BERTH_FIXTURES_ENV is not set: run `scripts/fixtures up` and set \
                 BERTH_FIXTURES_ENV=$HOME/.cache/berth/fixtures/env"
            )
        });
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {path} ({e}): run `scripts/fixtures up`"));
        let vars: HashMap<String, String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
            .collect();
        let images = vars
            .get("BERTH_FIX_IMAGES")
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Some(Fixtures { vars, images })
    }

    fn var(&self, k: &str) -> &str {
        self.vars
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing from the fixtures env file"))
    }

    fn creds(&self, prefix: &str) -> Credentials {
        Credentials {
            username: self.var(&format!("{prefix}_USER")).into(),
            password: self.var(&format!("{prefix}_PASS")).into(),
        }
    }

    /// images.json's entry for a reference, if the file is there.
    fn image(&self, reference: &str) -> Option<&serde_json::Value> {
        self.images.iter().find(|i| i["reference"] == reference)
    }
}

fn config() -> RegistryConfig {
    RegistryConfig {
        retry: RetryPolicy {
            attempts: 3,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        },
        ..Default::default()
    }
}

fn anonymous() -> Client {
    Client::new(config(), Arc::new(StaticCredentials::none())).unwrap()
}

fn with_creds(host: &str, creds: Credentials) -> Client {
    Client::new(
        config(),
        Arc::new(StaticCredentials::none().with(host, creds)),
    )
    .unwrap()
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

/// Streams a blob and checks its sha256 and size; returns the size.
async fn fetch_and_verify(c: &Client, r: &Reference, d: &Descriptor) -> u64 {
    let mut blob = c
        .fetch_blob(r, d)
        .await
        .unwrap_or_else(|e| panic!("fetch {}: {e}", d.digest));
    let mut hash = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = blob.stream.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("stream {}: {e}", d.digest));
        n += chunk.len() as u64;
        hash.update(&chunk);
    }
    assert_eq!(
        format!("sha256:{}", hex::encode(hash.finalize())),
        d.digest,
        "blob of {r}"
    );
    assert_eq!(n, d.size);
    n
}

/// Resolves and pulls every layer; checks what images.json recorded when it is there.
async fn pull(
    fx: &Fixtures,
    c: &Client,
    reference: &str,
    platform: &Platform,
) -> berth_registry::Resolved {
    let r = Reference::parse(reference).unwrap();
    let res = c
        .resolve(&r, platform)
        .await
        .unwrap_or_else(|e| panic!("resolve {reference}: {e}"));
    assert_eq!(
        res.config.digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&res.config.bytes)))
    );
    assert!(!res.layers.is_empty(), "{reference} has layers");
    for l in &res.layers {
        fetch_and_verify(c, &r, l).await;
    }
    if let Some(img) = fx.image(&r.to_string()) {
        assert_eq!(
            res.repo_digest,
            img["digest"].as_str().unwrap(),
            "{reference}"
        );
        let manifest = match img["manifests"].as_array() {
            Some(entries) => {
                assert_eq!(
                    res.index.as_ref().unwrap().media_type,
                    img["media_type"].as_str().unwrap()
                );
                entries
                    .iter()
                    .find(|m| m["digest"] == res.manifest.digest.as_str())
                    .unwrap_or_else(|| panic!("{reference}: chosen manifest not in images.json"))
            }
            None => {
                assert_eq!(res.manifest.media_type, img["media_type"].as_str().unwrap());
                img
            }
        };
        assert_eq!(
            res.config.digest,
            manifest["config_digest"].as_str().unwrap(),
            "{reference}"
        );
        let layers: Vec<&str> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(
            res.layers
                .iter()
                .map(|l| l.digest.as_str())
                .collect::<Vec<_>>(),
            layers,
            "{reference}"
        );
    }
    res
}

#[tokio::test]
async fn open_registry_images() {
    let Some(fx) = Fixtures::load() else { return };
    let open = fx.var("BERTH_FIX_OPEN").to_string();
    let c = anonymous();
    for repo in ["berth/hello", "berth/busybox", "berth/multiarch"] {
        for tag in ["latest", "v2s2"] {
            let res = pull(&fx, &c, &format!("{open}/{repo}:{tag}"), &amd64()).await;
            assert_eq!(res.endpoint.base.as_str(), format!("http://{open}/"));
            assert_eq!(
                res.index.is_some(),
                repo == "berth/multiarch",
                "{repo}:{tag}"
            );
            if repo == "berth/multiarch" {
                assert_ne!(res.repo_digest, res.manifest.digest);
            } else {
                assert_eq!(res.repo_digest, res.manifest.digest);
            }
            // By digest, the same content.
            let pinned = format!("{open}/{repo}@{}", res.repo_digest);
            let again = pull(&fx, &c, &pinned, &amd64()).await;
            assert_eq!(again.manifest.digest, res.manifest.digest);
        }
    }
}

#[tokio::test]
async fn open_registry_multiarch_platforms() {
    let Some(fx) = Fixtures::load() else { return };
    let open = fx.var("BERTH_FIX_OPEN");
    let c = anonymous();
    let r = format!("{open}/berth/multiarch:latest");
    let amd = pull(&fx, &c, &r, &amd64()).await;
    let arm = pull(&fx, &c, &r, &Platform::parse("linux/arm64/v8").unwrap()).await;
    assert_eq!(amd.repo_digest, arm.repo_digest);
    assert_ne!(amd.manifest.digest, arm.manifest.digest);
    match c
        .resolve(
            &Reference::parse(&r).unwrap(),
            &Platform::parse("linux/s390x").unwrap(),
        )
        .await
    {
        Err(RegistryError::NoMatchingPlatform { wanted, available }) => {
            assert_eq!(wanted, "linux/s390x");
            assert!(
                available.contains(&"linux/amd64".to_string()),
                "{available:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let e = c
        .resolve(
            &Reference::parse(&format!("{open}/berth/no-such-repo")).unwrap(),
            &amd64(),
        )
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    eprintln!("missing repository: {e}");
}

#[tokio::test]
async fn basic_auth_registry() {
    let Some(fx) = Fixtures::load() else { return };
    let host = fx.var("BERTH_FIX_BASIC");
    let r = format!("{host}/berth/hello:latest");
    let e = anonymous()
        .resolve(&Reference::parse(&r).unwrap(), &amd64())
        .await
        .unwrap_err();
    assert!(e.is_auth(), "anonymous pull from the Basic registry: {e:?}");
    eprintln!("anonymous, Basic registry: {e}");

    let c = with_creds(host, fx.creds("BERTH_FIX_BASIC"));
    pull(&fx, &c, &r, &amd64()).await;

    let login = anonymous();
    login
        .check_login(host, &fx.creds("BERTH_FIX_BASIC"))
        .await
        .unwrap();
    let bad = Credentials {
        username: fx.creds("BERTH_FIX_BASIC").username,
        password: "wrong".into(),
    };
    assert!(login.check_login(host, &bad).await.unwrap_err().is_auth());
}

async fn tokens_issued(fx: &Fixtures) -> u64 {
    let url = format!("http://{}/stats", fx.var("BERTH_FIX_TOKEN_SERVER"));
    let stats: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    stats["issued"]
        .as_u64()
        .unwrap_or_else(|| panic!("no issued count in {stats}"))
}

#[tokio::test]
async fn token_auth_registry() {
    let Some(fx) = Fixtures::load() else { return };
    let host = fx.var("BERTH_FIX_TOKEN");
    let r = format!("{host}/berth/hello:latest");
    let e = anonymous()
        .resolve(&Reference::parse(&r).unwrap(), &amd64())
        .await
        .unwrap_err();
    assert!(e.is_auth(), "anonymous pull from the token registry: {e:?}");
    eprintln!("anonymous, token registry: {e}");

    let c = with_creds(host, fx.creds("BERTH_FIX_TOKEN"));
    pull(&fx, &c, &r, &amd64()).await;

    let login = anonymous();
    login
        .check_login(host, &fx.creds("BERTH_FIX_TOKEN"))
        .await
        .unwrap();
    let bad = Credentials {
        username: fx.creds("BERTH_FIX_TOKEN").username,
        password: "wrong".into(),
    };
    assert!(login.check_login(host, &bad).await.unwrap_err().is_auth());
}

#[tokio::test]
async fn token_is_reused_across_resolves() {
    let Some(fx) = Fixtures::load() else { return };
    let host = fx.var("BERTH_FIX_TOKEN");
    let r = Reference::parse(&format!("{host}/berth/hello:latest")).unwrap();
    // The token server is shared with anything else running: a count disturbed by others is
    // measured again; a client that does not reuse its token issues 2+ every time.
    let mut deltas = Vec::new();
    for _ in 0..3 {
        let c = with_creds(host, fx.creds("BERTH_FIX_TOKEN"));
        let before = tokens_issued(&fx).await;
        c.resolve(&r, &amd64()).await.unwrap();
        c.resolve(&r, &amd64()).await.unwrap();
        let delta = tokens_issued(&fx).await - before;
        if delta == 1 {
            return;
        }
        deltas.push(delta);
    }
    panic!("two resolves issued more than one token each time: {deltas:?}");
}

#[tokio::test]
async fn mirror_fallback_with_real_registries() {
    let Some(fx) = Fixtures::load() else { return };
    let open = fx.var("BERTH_FIX_OPEN");
    let token = fx.var("BERTH_FIX_TOKEN");
    // The open registry mirrors the token one (same content); anonymous works through it.
    let mut cfg = config();
    let dead = url::Url::parse("http://127.0.0.1:1/").unwrap();
    let mirror = url::Url::parse(&format!("http://{open}/")).unwrap();
    cfg.mirrors
        .insert(token.to_string(), vec![dead.clone(), mirror.clone()]);
    let c = Client::new(cfg, Arc::new(StaticCredentials::none())).unwrap();
    let r = Reference::parse(&format!("{token}/berth/hello:latest")).unwrap();
    let res = c.resolve(&r, &amd64()).await.unwrap();
    assert!(res.endpoint.mirror);
    assert_eq!(res.endpoint.base, mirror);
    assert_eq!(res.skipped.len(), 1);
    assert_eq!(res.skipped[0].endpoint.base, dead);
    let blob = c.fetch_blob(&r, &res.layers[0]).await.unwrap();
    assert_eq!(blob.endpoint.base, mirror);
    assert_eq!(blob.skipped.len(), 1);
    fetch_and_verify(&c, &r, &res.layers[0]).await;
}

/// `n` pseudo-random bytes (xorshift, seeded) and their digest.
fn random_blob(n: usize, seed: u64) -> (bytes::Bytes, String) {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
    (out.into(), digest)
}

/// An upload body handing out `bytes` in pieces of `piece` bytes (not a divisor of the chunk
/// size, so pieces straddle the chunks).
fn upload_body(bytes: bytes::Bytes, piece: usize) -> berth_registry::UploadBody {
    let pieces: Vec<Result<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>> = bytes
        .chunks(piece)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    Box::pin(futures_util::stream::iter(pieces))
}

/// A repository nobody pushed to before.
fn fresh_repo(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("berth/client-push-{what}-{}-{nanos}", std::process::id())
}

/// Blobs pushed in chunks (PATCH with Content-Range, then PUT) and in one PUT come back
/// byte for byte; a manifest pushed over them resolves to the digest of its exact bytes;
/// content that is not what its digest says, or shorter than its size, is refused.
#[tokio::test]
async fn push_blobs_chunked_and_whole_then_a_manifest() {
    let fx = Fixtures::load().unwrap();
    for (host_var, creds) in [
        ("BERTH_FIX_OPEN", None),
        ("BERTH_FIX_TOKEN", Some(fx.creds("BERTH_FIX_TOKEN"))),
    ] {
        let host = fx.var(host_var).to_string();
        let client = match creds {
            Some(c) => with_creds(&host, c),
            None => anonymous(),
        };
        let repo = fresh_repo("chunks");
        let r = Reference::parse(&format!("{host}/{repo}:latest")).unwrap();

        let chunked = berth_registry::UploadPolicy {
            chunk_threshold: 0,
            chunk_size: 1 << 20,
        };
        let (layer, layer_digest) = random_blob((3 << 20) + 12345, 7);
        assert!(!client.blob_exists(&r, &layer_digest).await.unwrap());
        client
            .push_blob(
                &r,
                &layer_digest,
                layer.len() as u64,
                upload_body(layer.clone(), 100_003),
                chunked,
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{host}: chunked upload: {e}"));
        assert!(client.blob_exists(&r, &layer_digest).await.unwrap());
        let layer_desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: layer_digest.clone(),
            size: layer.len() as u64,
            platform: None,
            urls: None,
            annotations: None,
        };
        assert_eq!(
            fetch_and_verify(&client, &r, &layer_desc).await,
            layer.len() as u64
        );

        let config = bytes::Bytes::from_static(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        client
            .push_blob(
                &r,
                &config_digest,
                config.len() as u64,
                upload_body(config.clone(), 7),
                berth_registry::UploadPolicy::default(),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{host}: whole upload: {e}"));

        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let pushed = client
            .push_manifest(
                &r,
                "latest",
                "application/vnd.oci.image.manifest.v1+json",
                manifest.clone().into(),
            )
            .await
            .unwrap_or_else(|e| panic!("{host}: manifest: {e}"));
        assert_eq!(
            pushed,
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(manifest.as_bytes()))
            )
        );
        let resolved = client.resolve(&r, &amd64()).await.unwrap();
        assert_eq!(resolved.repo_digest, pushed);
        assert_eq!(resolved.manifest.bytes, manifest.as_bytes());
        assert_eq!(resolved.config.bytes, config);

        // Bytes that are not what the digest says: the registry refuses them at the PUT.
        let (other, _) = random_blob(4096, 99);
        let (_, claimed) = random_blob(4096, 100);
        let e = client
            .push_blob(
                &r,
                &claimed,
                4096,
                upload_body(other, 1000),
                berth_registry::UploadPolicy::default(),
                None,
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string().to_lowercase().contains("digest"),
            "{host}: {e}"
        );
        assert!(!client.blob_exists(&r, &claimed).await.unwrap());

        // A body shorter than its size fails on the way, in either mode.
        let (short, short_digest) = random_blob(5000, 3);
        for policy in [chunked, berth_registry::UploadPolicy::default()] {
            let e = client
                .push_blob(
                    &r,
                    &short_digest,
                    6000,
                    upload_body(short.clone(), 999),
                    policy,
                    None,
                )
                .await
                .unwrap_err();
            assert!(!client.blob_exists(&r, &short_digest).await.unwrap(), "{e}");
        }
    }
}
