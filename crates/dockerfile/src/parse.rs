//! From text to instructions, as Docker's parser does it: directives first, then one
//! instruction per logical line (continuations joined, comments and blank lines dropped).

/// Every instruction the classic builder knows.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A parse error, with the line it starts on; the message is Docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dockerfile parse error line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// An instruction's arguments: JSON (exec) form or the text as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    Json(Vec<String>),
    Text(String),
}

impl Args {
    /// The text form, or the JSON array as written back.
    pub fn text(&self) -> String {
        match self {
            Args::Text(t) => t.clone(),
            Args::Json(v) => serde_json::to_string(v).expect("strings serialise"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line the instruction starts on.
    pub line: usize,
    /// Upper case ("RUN").
    pub keyword: String,
    /// The instruction as written, continuations joined ("RUN echo hi").
    pub original: String,
    /// `--name=value` flags before the arguments, in order (`--name` alone has no value).
    pub flags: Vec<(String, Option<String>)>,
    pub args: Args,
}

impl Instruction {
    /// The value of flag `name`; an error for flags the instruction does not take.
    pub fn check_flags(&self, allowed: &[&str]) -> Result<(), String> {
        for (name, _) in &self.flags {
            if !allowed.contains(&name.as_str()) {
                return Err(format!("Unknown flag: {name}"));
            }
        }
        Ok(())
    }

    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or("true"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`\` unless `# escape=` says `` ` ``).
    pub escape: char,
    pub instructions: Vec<Instruction>,
}

fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (name, value) = rest.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.trim().to_string()))
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut first = 0;
    let mut seen = Vec::new();
    // Parser directives: only at the very top, each name once.
    while let Some(line) = lines.get(first) {
        let Some((name, value)) = directive(line) else {
            break;
        };
        if seen.contains(&name) {
            return Err(ParseError {
                line: first + 1,
                message: format!("only one {name} parser directive can be used"),
            });
        }
        match name.as_str() {
            "escape" => {
                escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(ParseError {
                            line: first + 1,
                            message: format!("invalid ESCAPE '{value}'. Must be ` or \\"),
                        })
                    }
                }
            }
            "syntax" | "check" => {}
            // An unknown directive is a comment, which ends the directives.
            _ => break,
        }
        seen.push(name);
        first += 1;
    }
    let mut instructions = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in lines.iter().enumerate().skip(first) {
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            // Comments and blank lines go, inside a continuation too.
            continue;
        }
        let content = raw.trim_end();
        let (content, continues) = match content.strip_suffix(escape) {
            Some(c) => (c, true),
            None => (content, false),
        };
        match &mut pending {
            Some((_, text)) => text.push_str(content),
            None => pending = Some((i + 1, content.to_string())),
        }
        if !continues {
            let (line, text) = pending.take().expect("pending");
            instructions.push(instruction(line, &text)?);
        }
    }
    if let Some((line, text)) = pending {
        if !text.trim().is_empty() {
            instructions.push(instruction(line, &text)?);
        }
    }
    Ok(Dockerfile {
        escape,
        instructions,
    })
}

/// One logical line → an instruction (also used for `ONBUILD` triggers and commit changes).
pub fn instruction(line: usize, text: &str) -> Result<Instruction, ParseError> {
    let text = text.trim();
    let (word, rest) = match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    };
    let keyword = word.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(ParseError {
            line,
            message: format!("unknown instruction: {keyword}"),
        });
    }
    let mut flags = Vec::new();
    let mut rest = rest;
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let word = &after[..end];
        rest = after[end..].trim_start();
        if word.is_empty() {
            break;
        }
        match word.split_once('=') {
            Some((n, v)) => flags.push((n.to_string(), Some(v.to_string()))),
            None => flags.push((word.to_string(), None)),
        }
    }
    let args = if rest.starts_with('[') {
        match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => Args::Json(v),
            Err(_) => Args::Text(rest.to_string()),
        }
    } else {
        Args::Text(rest.to_string())
    };
    let empty = match &args {
        Args::Text(t) => t.is_empty(),
        Args::Json(_) => false,
    };
    if empty && !matches!(keyword.as_str(), "CMD" | "ENTRYPOINT" | "RUN") {
        return Err(ParseError {
            line,
            message: format!("{keyword} requires at least one argument"),
        });
    }
    Ok(Instruction {
        line,
        keyword,
        original: text.to_string(),
        flags,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_json() {
        let df = parse(
            "# syntax=docker/dockerfile:1\n# escape=\\\nFROM busybox AS build\n\n# a comment\nRUN echo a \\\n  # inside\n  && echo b\nCMD [\"sh\", \"-c\", \"echo hi\"]\nCOPY --from=build --chown=1:2 /a /b\n",
        )
        .unwrap();
        assert_eq!(df.escape, '\\');
        let k: Vec<_> = df.instructions.iter().map(|i| i.keyword.as_str()).collect();
        assert_eq!(k, ["FROM", "RUN", "CMD", "COPY"]);
        assert_eq!(df.instructions[1].original, "RUN echo a   && echo b");
        assert_eq!(df.instructions[1].line, 6);
        assert_eq!(
            df.instructions[2].args,
            Args::Json(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        let copy = &df.instructions[3];
        assert_eq!(copy.flag("from"), Some("build"));
        assert_eq!(copy.flag("chown"), Some("1:2"));
        assert_eq!(copy.args, Args::Text("/a /b".into()));
    }

    #[test]
    fn escape_directive_and_errors() {
        let df = parse("# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.instructions[1].original, "RUN dir c:\\   && echo");
        let e = parse("FROM busybox\nFOO bar\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "dockerfile parse error line 2: unknown instruction: FOO"
        );
        let e = parse("FROM busybox\nENV\n").unwrap_err();
        assert_eq!(e.line, 2);
        // A directive after an instruction is a comment.
        let df = parse("FROM x\n# escape=`\nRUN a \\\n b\n").unwrap();
        assert_eq!(df.escape, '\\');
        assert_eq!(df.instructions[1].original, "RUN a  b");
    }
}
