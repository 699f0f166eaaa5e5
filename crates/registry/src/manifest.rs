//! Manifests, indexes and descriptors in their OCI and Docker v2 schema 2 forms, and choosing
//! the platform manifest out of a multi-arch index.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::reference::is_sha256_digest;

/// Media types Berth knows by name.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index (multi-platform).
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list (multi-platform).
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image manifest, schema 1 (deprecated, refused).
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker image manifest, schema 1, signed (deprecated, refused).
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

    /// The `Accept` header of a manifest request: every manifest type Berth can use.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
         application/vnd.oci.image.index.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json, \
         application/vnd.docker.distribution.manifest.list.v2+json";
}

/// Largest manifest or index Berth reads (as containerd and the distribution spec suggest).
pub const MANIFEST_MAX: u64 = 4 * 1024 * 1024;
/// Largest image config Berth reads into memory.
pub const CONFIG_MAX: u64 = 16 * 1024 * 1024;

/// What a manifest document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A single-platform image manifest (OCI or Docker v2s2).
    Image,
    /// A multi-platform index (OCI index or Docker manifest list).
    Index,
}

/// Classifies a manifest media type: Ok for the four supported ones, a clear error for schema 1
/// and anything else.
pub fn classify(media_type: &str, what: &str) -> Result<ManifestKind, RegistryError> {
    use media_type::*;
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(ManifestKind::Image),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index),
        DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED => Err(RegistryError::UnsupportedMediaType {
            what: what.to_string(),
            media_type: media_type.to_string(),
            reason: "Docker image manifest schema 1 is deprecated and not supported; \
                     push the image again with a current client"
                .into(),
        }),
        _ => Err(RegistryError::UnsupportedMediaType {
            what: what.to_string(),
            media_type: media_type.to_string(),
            reason: "not an image manifest or index (expected OCI or Docker v2 schema 2)".into(),
        }),
    }
}

/// The media type of a manifest document: its own `mediaType` field when it has one (OCI
/// recommends and Docker requires it), else the Content-Type the registry sent; a document with
/// `schemaVersion: 1` is schema 1 whatever it is labelled.
pub fn effective_media_type(bytes: &[u8], content_type: Option<&str>) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        schema_version: Option<serde_json::Value>,
        media_type: Option<String>,
    }
    let probe: Option<Probe> = serde_json::from_slice(bytes).ok();
    if let Some(p) = &probe {
        if p.schema_version
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            == Some(1)
        {
            return Some(media_type::DOCKER_SCHEMA1.to_string());
        }
        if let Some(m) = p.media_type.as_deref().filter(|m| !m.is_empty()) {
            return Some(m.to_string());
        }
    }
    let ct = content_type?.split(';').next()?.trim();
    // Generic JSON labels say nothing; an OCI index may omit its mediaType field.
    if ct.is_empty() || ct == "application/json" || ct == "text/plain" {
        return None;
    }
    Some(ct.to_string())
}

/// The platform an image runs on: `linux/amd64`, `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, `linux`.
    pub os: String,
    /// CPU architecture in Go's names: `amd64`, `arm64`, `arm`, `386`, `riscv64`, ...
    pub architecture: String,
    /// CPU variant: `v8` for arm64, `v7` for arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Linux on this machine's CPU (what a VM on this host runs): x86_64 → amd64,
    /// aarch64 → arm64/v8.
    pub fn host_linux() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// Parses `os/arch[/variant]` as `docker pull --platform` takes it; Go-style architecture
    /// aliases (x86_64, aarch64) are normalised.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?.to_ascii_lowercase();
        let arch = parts.next().filter(|p| !p.is_empty())?.to_ascii_lowercase();
        let variant = parts
            .next()
            .filter(|p| !p.is_empty())
            .map(str::to_ascii_lowercase);
        if parts.next().is_some() {
            return None;
        }
        Some(Platform {
            os,
            architecture: normalise_arch(&arch).into(),
            variant,
        })
    }

    /// Whether a manifest for `candidate` can be used where `self` is wanted: same OS and
    /// architecture, and the same variant when `self` names one (arm64 without a variant is v8).
    pub fn matches(&self, candidate: &Platform) -> bool {
        if !self.os.eq_ignore_ascii_case(&candidate.os)
            || normalise_arch(&self.architecture) != normalise_arch(&candidate.architecture)
        {
            return false;
        }
        match &self.variant {
            None => true,
            Some(wanted) => {
                let arch = normalise_arch(&self.architecture);
                normalise_variant(arch, Some(wanted))
                    == normalise_variant(arch, candidate.variant.as_deref())
            }
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalise_arch(a: &str) -> &str {
    match a {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        other => other,
    }
}

fn normalise_variant<'a>(arch: &str, v: Option<&'a str>) -> Option<&'a str> {
    match (arch, v) {
        ("arm64", None | Some("8")) => Some("v8"),
        ("arm", Some("7")) => Some("v7"),
        ("arm", Some("6")) => Some("v6"),
        (_, v) => v,
    }
}

/// A content descriptor as in OCI and Docker v2s2: what a manifest says about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// Size of the content in bytes.
    pub size: u64,
    /// Platform of a manifest listed in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Other places the content may be fetched from (foreign layers); not used by Berth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Arbitrary metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest (OCI image manifest or Docker v2 schema 2 manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The document's own media type, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
}

/// A multi-platform index (OCI image index or Docker manifest list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// The document's own media type, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// One entry per platform (and, with buildx, attestation manifests for `unknown/unknown`).
    pub manifests: Vec<Descriptor>,
}

impl ImageManifest {
    /// Parses and checks a manifest: schema version 2, well-formed digests.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ImageManifest, RegistryError> {
        let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| invalid(what, e))?;
        if m.schema_version != 2 {
            return Err(invalid(
                what,
                format!("schemaVersion {} (expected 2)", m.schema_version),
            ));
        }
        for d in std::iter::once(&m.config).chain(&m.layers) {
            check_descriptor(d, what)?;
        }
        Ok(m)
    }
}

impl ImageIndex {
    /// Parses and checks an index: schema version 2, well-formed digests.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ImageIndex, RegistryError> {
        let i: ImageIndex = serde_json::from_slice(bytes).map_err(|e| invalid(what, e))?;
        if i.schema_version != 2 {
            return Err(invalid(
                what,
                format!("schemaVersion {} (expected 2)", i.schema_version),
            ));
        }
        for d in &i.manifests {
            check_descriptor(d, what)?;
        }
        Ok(i)
    }

    /// The entry for `wanted`, or the error listing the platforms there are. Entries without a
    /// platform and attestation entries (`unknown/unknown`) are never chosen.
    pub fn select(&self, wanted: &Platform) -> Result<&Descriptor, RegistryError> {
        let usable = || {
            self.manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| (d, p)))
                .filter(|(_, p)| p.os != "unknown" && p.architecture != "unknown")
        };
        if let Some((d, _)) = usable().find(|(_, p)| wanted.matches(p)) {
            return Ok(d);
        }
        let mut available: Vec<String> = usable().map(|(_, p)| p.to_string()).collect();
        available.dedup();
        Err(RegistryError::NoMatchingPlatform {
            wanted: wanted.to_string(),
            available,
        })
    }
}

fn invalid(what: &str, message: impl fmt::Display) -> RegistryError {
    RegistryError::InvalidManifest {
        what: what.to_string(),
        message: message.to_string(),
    }
}

fn check_descriptor(d: &Descriptor, what: &str) -> Result<(), RegistryError> {
    if !is_sha256_digest(&d.digest) {
        return Err(invalid(
            what,
            format!(
                "descriptor digest {:?} is not sha256:<64 hex digits>",
                d.digest
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn index(platforms: &[&str]) -> ImageIndex {
        let manifests = platforms
            .iter()
            .enumerate()
            .map(|(i, s)| Descriptor {
                media_type: media_type::OCI_MANIFEST.into(),
                digest: format!("sha256:{:064x}", i),
                size: 1,
                platform: Platform::parse(s),
                urls: None,
                annotations: None,
            })
            .collect();
        ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests,
        }
    }

    #[test]
    fn platform_parse_and_display() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/arm64/v8").variant.as_deref(), Some("v8"));
        assert_eq!(p("linux/x86_64").architecture, "amd64");
        assert_eq!(p("Linux/aarch64").to_string(), "linux/arm64");
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("linux/arm/v7/x").is_none());
        let host = Platform::host_linux();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host, p("linux/amd64"));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host, p("linux/arm64/v8"));
        }
    }

    #[test]
    fn platform_serde_uses_oci_names() {
        let j = serde_json::to_string(&p("linux/arm/v7")).unwrap();
        assert_eq!(j, r#"{"os":"linux","architecture":"arm","variant":"v7"}"#);
        let back: Platform =
            serde_json::from_str(r#"{"os":"linux","architecture":"amd64","os.version":"x"}"#)
                .unwrap();
        assert_eq!(back, p("linux/amd64"));
    }

    #[test]
    fn platform_selection() {
        let i = index(&[
            "linux/amd64",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64",
            "unknown/unknown",
        ]);
        assert_eq!(
            i.select(&p("linux/amd64")).unwrap().digest,
            i.manifests[0].digest
        );
        assert_eq!(
            i.select(&p("linux/arm/v7")).unwrap().digest,
            i.manifests[2].digest
        );
        assert_eq!(
            i.select(&p("linux/arm")).unwrap().digest,
            i.manifests[1].digest
        );
        // arm64 without a variant in the index is v8.
        assert_eq!(
            i.select(&p("linux/arm64/v8")).unwrap().digest,
            i.manifests[3].digest
        );
        assert_eq!(
            i.select(&Platform::host_linux()).is_ok(),
            cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
        );
        match i.select(&p("linux/s390x")) {
            Err(RegistryError::NoMatchingPlatform { wanted, available }) => {
                assert_eq!(wanted, "linux/s390x");
                assert_eq!(
                    available,
                    ["linux/amd64", "linux/arm/v6", "linux/arm/v7", "linux/arm64"]
                );
            }
            other => panic!("{other:?}"),
        }
        let e = i.select(&p("windows/amd64")).unwrap_err().to_string();
        assert!(
            e.contains("windows/amd64") && e.contains("linux/arm64"),
            "{e}"
        );
        // Variant mismatch.
        let only_v8 = index(&["linux/arm64/v8"]);
        assert!(only_v8.select(&p("linux/arm64/v9")).is_err());
        assert!(only_v8.select(&p("linux/arm64")).is_ok());
    }

    #[test]
    fn media_types() {
        use media_type::*;
        assert_eq!(classify(OCI_MANIFEST, "m").unwrap(), ManifestKind::Image);
        assert_eq!(classify(DOCKER_MANIFEST, "m").unwrap(), ManifestKind::Image);
        assert_eq!(classify(OCI_INDEX, "m").unwrap(), ManifestKind::Index);
        assert_eq!(
            classify(DOCKER_MANIFEST_LIST, "m").unwrap(),
            ManifestKind::Index
        );
        let e = classify(DOCKER_SCHEMA1_SIGNED, "manifest x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema 1") && e.contains("manifest x"), "{e}");
        let e = classify("application/vnd.cncf.helm.config.v1+json", "m").unwrap_err();
        assert!(matches!(e, RegistryError::UnsupportedMediaType { .. }));
        for t in [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ] {
            assert!(MANIFEST_ACCEPT.split(", ").any(|a| a == t));
        }

        // The document's own mediaType wins; schemaVersion 1 is schema 1 whatever the label.
        let doc = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert_eq!(
            effective_media_type(doc, Some(OCI_MANIFEST)).as_deref(),
            Some(OCI_INDEX)
        );
        let v1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert_eq!(
            effective_media_type(v1, Some(DOCKER_MANIFEST)).as_deref(),
            Some(DOCKER_SCHEMA1)
        );
        let bare = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            effective_media_type(
                bare,
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8")
            )
            .as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(effective_media_type(bare, Some("application/json")), None);
        assert_eq!(effective_media_type(b"not json", None), None);
    }

    #[test]
    fn malformed_manifests() {
        let e = ImageManifest::parse(b"{\"schemaVersion\":2,", "manifest x").unwrap_err();
        match e {
            RegistryError::InvalidManifest { what, message } => {
                assert_eq!(what, "manifest x");
                assert!(message.contains("EOF"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let bad_digest = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:../../etc","size":1},"layers":[]}"#;
        assert!(ImageManifest::parse(bad_digest, "m")
            .unwrap_err()
            .to_string()
            .contains("sha256:../../etc"));
        let v3 = br#"{"schemaVersion":3,"manifests":[]}"#;
        assert!(ImageIndex::parse(v3, "i").is_err());
    }
}
