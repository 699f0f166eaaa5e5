//! Docker's word processing for Dockerfile arguments: quotes are removed (single quotes keep
//! everything literal, double quotes allow `$` substitution), the escape character makes the
//! next character literal, and `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`,
//! `${VAR:+word}`, `${VAR+word}`, `${VAR:?message}` and `${VAR?message}` are substituted.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${` without its `}`
    #[error("missing '}}' in {0:?}")]
    Unterminated(String),
    /// an unterminated quote
    #[error("unexpected end of statement while looking for matching {quote} in {word:?}")]
    Quote { quote: char, word: String },
    /// `${VAR:?message}` with VAR unset (or empty)
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    /// `${…}` with something that is not a name
    #[error("bad substitution in {0:?}")]
    Bad(String),
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    env: &'a dyn Fn(&str) -> Option<String>,
    source: &'a str,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// Reads words until the end (or, with `until_brace`, an unquoted `}`); `split` splits on
    /// unquoted whitespace.
    fn words(&mut self, split: bool, until_brace: bool) -> Result<Vec<String>, ExpandError> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        while let Some(c) = self.peek() {
            if until_brace && c == '}' {
                break;
            }
            if split && c.is_whitespace() {
                self.pos += 1;
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            in_word = true;
            self.pos += 1;
            if c == self.escape {
                match self.peek() {
                    Some(n) => {
                        cur.push(n);
                        self.pos += 1;
                    }
                    None => cur.push(c),
                }
            } else if c == '\'' {
                loop {
                    match self.peek() {
                        Some('\'') => {
                            self.pos += 1;
                            break;
                        }
                        Some(n) => {
                            cur.push(n);
                            self.pos += 1;
                        }
                        None => {
                            return Err(ExpandError::Quote {
                                quote: '\'',
                                word: self.source.to_string(),
                            })
                        }
                    }
                }
            } else if c == '"' {
                loop {
                    match self.peek() {
                        Some('"') => {
                            self.pos += 1;
                            break;
                        }
                        Some('$') => {
                            self.pos += 1;
                            cur.push_str(&self.dollar()?);
                        }
                        Some(n) if n == self.escape => {
                            self.pos += 1;
                            match self.peek() {
                                Some(m) if m == '"' || m == '$' || m == self.escape => {
                                    cur.push(m);
                                    self.pos += 1;
                                }
                                _ => cur.push(n),
                            }
                        }
                        Some(n) => {
                            cur.push(n);
                            self.pos += 1;
                        }
                        None => {
                            return Err(ExpandError::Quote {
                                quote: '"',
                                word: self.source.to_string(),
                            })
                        }
                    }
                }
            } else if c == '$' {
                cur.push_str(&self.dollar()?);
            } else {
                cur.push(c);
            }
        }
        if in_word || (!split && words.is_empty()) {
            words.push(cur);
        }
        Ok(words)
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().collect();
                if name.is_empty() {
                    return Err(ExpandError::Bad(self.source.to_string()));
                }
                let value = (self.env)(&name);
                let c = self.peek();
                if c == Some('}') {
                    self.pos += 1;
                    return Ok(value.unwrap_or_default());
                }
                let colon = c == Some(':');
                if colon {
                    self.pos += 1;
                }
                let op = self
                    .peek()
                    .ok_or_else(|| ExpandError::Unterminated(self.source.to_string()))?;
                if !matches!(op, '-' | '+' | '?') {
                    return Err(ExpandError::Bad(self.source.to_string()));
                }
                self.pos += 1;
                let word = self.words(false, true)?.concat();
                if self.peek() != Some('}') {
                    return Err(ExpandError::Unterminated(self.source.to_string()));
                }
                self.pos += 1;
                let set = match (&value, colon) {
                    (Some(v), true) => !v.is_empty(),
                    (Some(_), false) => true,
                    (None, _) => false,
                };
                Ok(match op {
                    '-' if set => value.unwrap_or_default(),
                    '-' => word,
                    '+' if set => word,
                    '+' => String::new(),
                    _ if set => value.unwrap_or_default(),
                    _ => {
                        return Err(ExpandError::Required {
                            name,
                            message: if word.is_empty() {
                                "parameter not set".into()
                            } else {
                                word
                            },
                        })
                    }
                })
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.pos += 1;
                }
                let name: String = self.chars[start..self.pos].iter().collect();
                Ok((self.env)(&name).unwrap_or_default())
            }
            _ => Ok("$".into()),
        }
    }
}

/// Processes one word (quotes removed, variables substituted; whitespace kept).
pub fn expand_word(
    word: &str,
    escape: char,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut l = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        env,
        source: word,
    };
    Ok(l.words(false, false)?.concat())
}

/// Processes a line into words, split on unquoted whitespace.
pub fn expand_words(
    text: &str,
    escape: char,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ExpandError> {
    let mut l = Lexer {
        chars: text.chars().collect(),
        pos: 0,
        escape,
        env,
        source: text,
    };
    l.words(true, false)
}

/// Splits a line on unquoted whitespace without processing anything (quotes and escapes
/// stay): how Docker cuts `ENV a=1 b="x y"` into pairs before expanding each.
pub fn split_raw(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == escape && quote != Some('\'') {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                continue;
            }
            None => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "A" => Some("alpha".into()),
            "E" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn substitutions() {
        let x = |w: &str| expand_word(w, '\\', &env).unwrap();
        assert_eq!(x("$A/${A}x"), "alpha/alphax");
        assert_eq!(x("${B:-def}"), "def");
        assert_eq!(x("${E:-def}|${E-def}"), "def|");
        assert_eq!(x("${A:+set}|${B:+set}"), "set|");
        assert_eq!(x("'$A' \"$A\" \\$A"), "$A alpha $A");
        assert_eq!(x("${B:-${A}}"), "alpha");
        assert_eq!(x("a$"), "a$");
        assert!(expand_word("${B:?needed}", '\\', &env).is_err());
        assert!(expand_word("\"open", '\\', &env).is_err());
        assert_eq!(
            expand_words("a \"b c\"  $A", '\\', &env).unwrap(),
            ["a", "b c", "alpha"]
        );
        assert_eq!(
            split_raw("a=1 b=\"x y\" c='p q'", '\\'),
            ["a=1", "b=\"x y\"", "c='p q'"]
        );
    }
}
