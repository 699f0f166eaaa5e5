//! Image names as users write them and as Docker shows them. berthd normalises every name with
//! [`berth_registry::Reference`] before it reaches the core, and shows Docker's "familiar" form
//! ("busybox:latest" for "docker.io/library/busybox:latest") in every answer.

use berth_proto::ImageSelector;
use berth_registry::Reference;

/// "docker.io/library/busybox:latest" → "busybox:latest"; "docker.io/u/app" → "u/app"; other
/// registries unchanged.
pub fn familiar(normalised: &str) -> String {
    if let Some(rest) = normalised.strip_prefix("docker.io/") {
        return rest
            .strip_prefix("library/")
            .filter(|r| !r.contains('/'))
            .unwrap_or(rest)
            .to_string();
    }
    normalised.to_string()
}

/// What the user typed, as a selector: a reference (tag defaulting to latest) and, when it could
/// be one, an image id prefix. Docker tries the reference first.
pub fn selector(input: &str) -> Result<ImageSelector, berth_registry::ReferenceError> {
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    let id_like = !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if input.starts_with("sha256:") {
        return Ok(ImageSelector {
            name: None,
            id_prefix: id_like.then(|| input.to_string()),
        });
    }
    let name = match Reference::parse(input) {
        Ok(r) => Some(r.to_string()),
        Err(e) if !id_like => return Err(e),
        Err(_) => None,
    };
    Ok(ImageSelector {
        name,
        id_prefix: id_like.then(|| input.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_forms() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(
            familiar("docker.io/library/busybox@sha256:ab"),
            "busybox@sha256:ab"
        );
        assert_eq!(familiar("docker.io/user/app:1"), "user/app:1");
        assert_eq!(familiar("docker.io/library/a/b:1"), "library/a/b:1");
        assert_eq!(
            familiar("127.0.0.1:15000/berth/hello:latest"),
            "127.0.0.1:15000/berth/hello:latest"
        );
    }

    #[test]
    fn selectors() {
        let s = selector("busybox").unwrap();
        assert_eq!(s.name.as_deref(), Some("docker.io/library/busybox:latest"));
        assert_eq!(s.id_prefix, None);
        let s = selector("abc123").unwrap();
        assert_eq!(s.name.as_deref(), Some("docker.io/library/abc123:latest"));
        assert_eq!(s.id_prefix.as_deref(), Some("abc123"));
        let s = selector("sha256:abc123").unwrap();
        assert_eq!(s.name, None);
        assert_eq!(s.id_prefix.as_deref(), Some("sha256:abc123"));
        assert!(selector("UPPER/Case").is_err());
    }
}
