//! Container names: Docker's validation rule, and generated "adjective_noun" names for
//! containers created without one (our own word lists, on a harbour theme).

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "breezy", "calm", "clever", "cosy", "crisp", "daring", "eager",
    "fond", "gentle", "happy", "hardy", "jolly", "keen", "kind", "lively", "lucky", "mellow",
    "merry", "nimble", "noble", "plucky", "proud", "quick", "quiet", "rapid", "serene", "sharp",
    "shiny", "steady", "sturdy", "sunny", "swift", "tidy", "trusty", "vivid", "warm", "zesty",
];

const NOUNS: &[&str] = &[
    "anchor",
    "barge",
    "beacon",
    "bollard",
    "buoy",
    "cabin",
    "canal",
    "capstan",
    "cove",
    "dinghy",
    "dock",
    "ferry",
    "galley",
    "harbour",
    "hull",
    "jetty",
    "keel",
    "ketch",
    "lagoon",
    "lantern",
    "lighthouse",
    "lock",
    "marina",
    "mast",
    "mooring",
    "narrowboat",
    "oar",
    "pier",
    "pilot",
    "quay",
    "raft",
    "rudder",
    "schooner",
    "skiff",
    "sloop",
    "tiller",
    "tug",
    "wharf",
    "winch",
    "yacht",
];

/// A random "adjective_noun"; after a few collisions the caller asks with `attempt` > 0 and
/// gets a number appended, as Docker does.
pub fn generate(attempt: u32) -> String {
    use rand::seq::SliceRandom;
    let mut rng = rand::thread_rng();
    let adj = ADJECTIVES.choose(&mut rng).expect("non-empty list");
    let noun = NOUNS.choose(&mut rng).expect("non-empty list");
    if attempt == 0 {
        format!("{adj}_{noun}")
    } else {
        format!("{adj}_{noun}{}", rand::random::<u8>() % 10)
    }
}

/// Strips one leading '/' and checks Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn normalise(name: &str) -> Result<String, String> {
    let n = name.strip_prefix('/').unwrap_or(name);
    let mut chars = n.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok =
        n.len() >= 2 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(n.to_string())
    } else {
        Err(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        assert_eq!(normalise("/web-1").unwrap(), "web-1");
        assert_eq!(normalise("a.b_c").unwrap(), "a.b_c");
        assert!(normalise("x").is_err());
        assert!(normalise("-x").is_err());
        assert!(normalise("a b").is_err());
        assert!(normalise("").is_err());
        for attempt in 0..3 {
            let g = generate(attempt);
            assert_eq!(normalise(&g).unwrap(), g);
            assert!(g.contains('_'));
        }
    }
}
