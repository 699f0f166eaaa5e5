//! `.dockerignore`: one pattern a line (Go's `filepath.Match` syntax plus `**`), `#` comments,
//! `!` exceptions; the last pattern that matches a path decides. A pattern that matches a
//! directory excludes everything under it.

#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    rules: Vec<(Vec<char>, bool)>,
}

fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl IgnoreRules {
    pub fn parse(text: &str) -> IgnoreRules {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (pattern, exception) = match line.strip_prefix('!') {
                Some(p) => (p.trim(), true),
                None => (line, false),
            };
            let pattern = clean(pattern);
            if pattern.is_empty() {
                continue;
            }
            rules.push((pattern.chars().collect(), exception));
        }
        IgnoreRules { rules }
    }

    /// Whether `path` (relative to the context, '/'-separated) is excluded.
    pub fn excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let mut excluded = false;
        for (pattern, exception) in &self.rules {
            let mut hit = false;
            let mut prefix = String::new();
            for (i, part) in path.split('/').enumerate() {
                if i > 0 {
                    prefix.push('/');
                }
                prefix.push_str(part);
                let candidate: Vec<char> = prefix.chars().collect();
                if glob(pattern, &candidate) {
                    hit = true;
                    break;
                }
            }
            if hit {
                excluded = !exception;
            }
        }
        excluded
    }

    /// Whether an exception could re-include something under directory `dir` (so the walk
    /// must still look inside an excluded directory).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, e)| *e)
    }
}

/// Go's `filepath.Match` with `**` matching any number of path components.
pub fn glob(p: &[char], s: &[char]) -> bool {
    if p.is_empty() {
        return s.is_empty();
    }
    if p.len() >= 2 && p[0] == '*' && p[1] == '*' {
        let mut rest = &p[2..];
        if rest.first() == Some(&'/') {
            rest = &rest[1..];
            // `**/x` also matches `x` at the top.
            if glob(rest, s) {
                return true;
            }
        }
        return (0..=s.len()).any(|k| glob(rest, &s[k..]));
    }
    match p[0] {
        '*' => {
            let mut k = 0;
            loop {
                if glob(&p[1..], &s[k..]) {
                    return true;
                }
                if k >= s.len() || s[k] == '/' {
                    return false;
                }
                k += 1;
            }
        }
        '?' => !s.is_empty() && s[0] != '/' && glob(&p[1..], &s[1..]),
        '[' => {
            let Some(c) = s.first().copied() else {
                return false;
            };
            let mut i = 1;
            let negate = matches!(p.get(1), Some('^') | Some('!'));
            if negate {
                i += 1;
            }
            let mut matched = false;
            let mut first = true;
            while i < p.len() && (first || p[i] != ']') {
                first = false;
                let mut lo = p[i];
                if lo == '\\' && i + 1 < p.len() {
                    i += 1;
                    lo = p[i];
                }
                let mut hi = lo;
                if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                    hi = p[i + 2];
                    i += 2;
                }
                if lo <= c && c <= hi {
                    matched = true;
                }
                i += 1;
            }
            if i >= p.len() {
                return false;
            }
            matched != negate && c != '/' && glob(&p[i + 1..], &s[1..])
        }
        '\\' if p.len() > 1 => !s.is_empty() && s[0] == p[1] && glob(&p[2..], &s[1..]),
        c => !s.is_empty() && s[0] == c && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_exceptions_and_double_star() {
        let r = IgnoreRules::parse(
            "# comment\n*.log\n!keep.log\nsecret/\n**/*.tmp\n/build\ndocs/[a-c]*.md\n",
        );
        assert!(r.excluded("a.log"));
        assert!(!r.excluded("keep.log"));
        assert!(!r.excluded("sub/a.log"));
        assert!(r.excluded("secret/x/y"));
        assert!(r.excluded("x.tmp"));
        assert!(r.excluded("a/b/c.tmp"));
        assert!(r.excluded("build/out"));
        assert!(r.excluded("docs/about.md"));
        assert!(!r.excluded("docs/zed.md"));
        assert!(!r.excluded("Dockerfile"));
    }
}
