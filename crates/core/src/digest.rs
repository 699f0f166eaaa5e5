//! Content digests (`sha256:<64 lowercase hex>`) and OCI chain ids.
//!
//! Only sha256 is accepted: it is what every registry, Docker and the OCI image spec use, and a
//! single algorithm keeps the store layout (`blobs/sha256/<hex>`) and comparisons trivial.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "sha256:";
const HEX_LEN: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest. Ordering and equality are those of the string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a digest.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// unsupported digest algorithm in {0:?}: only sha256 is supported
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Algorithm(String),
    /// malformed digest {0:?}: expected "sha256:" followed by 64 lowercase hex digits
    #[error("malformed digest {0:?}: expected \"sha256:\" followed by 64 lowercase hex digits")]
    Format(String),
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else (upper case, other lengths or
    /// algorithms) is refused, so two equal digests are always equal strings.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some(hex) = s.strip_prefix(PREFIX) else {
            return Err(match s.split_once(':') {
                Some((alg, _)) if !alg.is_empty() => DigestError::Algorithm(s.to_string()),
                _ => DigestError::Format(s.to_string()),
            });
        };
        if hex.len() != HEX_LEN || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Format(s.to_string()));
        }
        Ok(Digest(s.to_string()))
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::new_with_prefix(bytes))
    }

    /// Finalizes a running hash into a digest.
    pub fn from_sha256(h: Sha256) -> Digest {
        Digest(format!("{PREFIX}{}", hex::encode(h.finalize())))
    }
}

/// OCI chain ids of a stack of layers, bottom first: `chain(L0) = diff(L0)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`. Each one names a snapshot: the layer
/// applied over exactly that parent stack.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(d, Digest::of(b""));
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
        let mut h = Sha256::new();
        h.update(b"");
        assert_eq!(Digest::from_sha256(h), d);
    }

    #[test]
    fn refuses_other_forms() {
        let upper = EMPTY.to_ascii_uppercase().replace("SHA256", "sha256");
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &EMPTY[7..],
            &upper,
            &format!("{EMPTY}0"),
            "sha256:zz",
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(DigestError::Format(_))),
                "{bad:?}"
            );
        }
        let sha512 = format!("sha512:{}", "a".repeat(128));
        assert!(matches!(
            Digest::parse(&sha512),
            Err(DigestError::Algorithm(_))
        ));
    }

    #[test]
    fn serde_is_the_string_and_validates() {
        let d = Digest::parse(EMPTY).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:nope\"").is_err());
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        let chains = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(chains[0], a);
        let ab = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chains[1], ab);
        assert_eq!(chains[2], Digest::of(format!("{ab} {c}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
