//! What a Dockerfile needs from outside the build: the images its FROM lines and `COPY
//! --from` flags name (berthd pulls the missing ones before the build starts).

use std::collections::BTreeMap;

use crate::expand::{expand_word, expand_words};
use crate::parse::{parse, Args, Instruction};

/// The lower-case stage name of a `FROM image AS name`.
pub fn stage_name(ins: &Instruction) -> Option<String> {
    let words: Vec<&str> = match &ins.args {
        Args::Text(t) => t.split_whitespace().collect(),
        Args::Json(_) => Vec::new(),
    };
    match words.as_slice() {
        [_, a, n] if a.eq_ignore_ascii_case("as") => Some(n.to_ascii_lowercase()),
        _ => None,
    }
}

/// The image references a Dockerfile needs from outside (FROM and `COPY --from`, not stages
/// or `scratch`), after substituting the ARGs before the first FROM with `build_args`.
pub fn external_images(
    dockerfile: &str,
    build_args: &BTreeMap<String, Option<String>>,
) -> Result<Vec<String>, String> {
    let df = parse(dockerfile).map_err(|e| e.to_string())?;
    let mut meta: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    let mut seen_from = false;
    for ins in &df.instructions {
        match ins.keyword.as_str() {
            "ARG" if !seen_from => {
                let words = expand_words(&ins.args.text(), df.escape, &|_| None)
                    .map_err(|e| e.to_string())?;
                for w in words {
                    let (n, d) = match w.split_once('=') {
                        Some((n, d)) => (n.to_string(), Some(d.to_string())),
                        None => (w, None),
                    };
                    let v = match build_args.get(&n) {
                        Some(Some(v)) => Some(v.clone()),
                        _ => d,
                    };
                    meta.insert(n, v);
                }
            }
            "FROM" => {
                seen_from = true;
                let words: Vec<&str> = match &ins.args {
                    Args::Text(t) => t.split_whitespace().collect(),
                    Args::Json(_) => Vec::new(),
                };
                let Some(first) = words.first() else { continue };
                let r = expand_word(first, df.escape, &|n| meta.get(n).cloned().flatten())
                    .map_err(|e| e.to_string())?;
                if !r.eq_ignore_ascii_case("scratch")
                    && !stages.contains(&r.to_ascii_lowercase())
                    && !out.contains(&r)
                {
                    out.push(r);
                }
                if let Some(n) = stage_name(ins) {
                    stages.push(n);
                }
            }
            "COPY" => {
                if let Some(f) = ins.flag("from") {
                    if !stages.contains(&f.to_ascii_lowercase())
                        && f.parse::<usize>().is_err()
                        && !out.contains(&f.to_string())
                    {
                        out.push(f.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_images_skip_stages_scratch_and_substitute_args() {
        let df = "ARG BASE=busybox\nARG V\nFROM ${BASE}:${V:-latest} AS build\nRUN true\nFROM build\nCOPY --from=build /a /a\nCOPY --from=alpine:3 /b /b\nFROM scratch\nCOPY --from=0 /x /x\n";
        let mut args = BTreeMap::new();
        assert_eq!(
            external_images(df, &args).unwrap(),
            ["busybox:latest", "alpine:3"]
        );
        args.insert("V".to_string(), Some("1.36".to_string()));
        assert_eq!(
            external_images(df, &args).unwrap(),
            ["busybox:1.36", "alpine:3"]
        );
    }
}
